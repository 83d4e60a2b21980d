"""The built-in audio domain of diffkit: diffusion on raw waveforms (see :mod:`diffkit_audio.domain`)."""
