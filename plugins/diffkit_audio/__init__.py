"""The built-in audio domain of diffkit: diffusion of audio clips, on log-mel spectrograms or raw
waveforms (see :mod:`diffkit_audio.domain`)."""
