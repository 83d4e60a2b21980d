"""The audio loaders: embedded notes and folders of files in other rates, channels and formats."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from diffkit_audio.audio_io import PEAK, TARGET_RMS, loudness_normalise, trim_silence
from diffkit_audio import data as data_module
from diffkit_audio.data import folder_dataset, notes_dataset, pattern_regex, read_headers, split_files
from diffkit_audio.notes import PITCHES, make_notes

from audio_helpers import RATE, peak_frequency, sine, write


def test_notes_are_deterministic_and_splits_differ(config):
    first = make_notes(RATE, 2000, 4)
    again = make_notes(RATE, 2000, 4)
    heldout = make_notes(RATE, 2000, 4, "heldout")
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[0].shape == (32, 2000) and first[2] == list(PITCHES)
    assert not np.allclose(first[0], heldout[0])
    assert np.abs(first[0]).max() <= 0.9 + 1e-6


@pytest.mark.parametrize("label", range(8))
def test_each_note_sounds_at_its_pitch(label):
    waves, labels, names = make_notes(RATE, 4000, 4)
    target = PITCHES[names[label]]
    for wave in waves[labels == label]:
        # The strongest partial of every timbre is the fundamental, within detune and bin width.
        assert abs(np.log2(peak_frequency(wave, RATE) / target)) < 0.03


def test_notes_dataset_items_and_batches(config):
    dataset = notes_dataset(config["data"])
    item = dataset[0]
    assert item["x"].shape == (1, 2000) and item["x"].dtype == torch.float32
    assert item["cond"].dtype == torch.long and item["cond"].ndim == 0
    batch = next(iter(DataLoader(dataset, batch_size=5, shuffle=True, collate_fn=default_collate)))
    assert batch["x"].shape == (5, 1, 2000) and batch["cond"].shape == (5,)
    assert dataset.num_classes == 8


def make_mixed_folder(root):
    """Two labelled folders holding a WAV at another rate in stereo, a FLAC at 44.1 kHz, an OGG,
    a corrupt file, an empty file and a header-only file with no samples."""
    left, right = sine(440, 0.3, 16000, 0.6), sine(440, 0.3, 16000, 0.2)
    write(root / "high" / "stereo16k.wav", np.stack([left, right], axis=1), 16000)
    write(root / "high" / "cd.flac", sine(1000, 0.2, 44100), 44100)
    write(root / "low" / "tone.ogg", sine(300, 0.4, 22050), 22050, format="OGG", subtype="VORBIS")
    write(root / "low" / "native.wav", sine(200, 0.1, RATE), RATE)
    (root / "low" / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage, not audio at all" * 10)
    (root / "low" / "empty.flac").write_bytes(b"")
    write(root / "high" / "silent_header.wav", np.zeros((0, 1), dtype=np.float32), RATE)
    (root / "low" / "notes.txt").write_text("not audio")


def test_folder_converts_rates_channels_formats_and_skips_bad_files(tmp_path, config):
    make_mixed_folder(tmp_path)
    with pytest.warns(UserWarning) as caught:
        dataset = folder_dataset(tmp_path, config["data"], random_crop=False)
    message = str(caught[0].message)
    assert "skipped 3 audio file(s)" in message
    for name in ("corrupt.wav", "empty.flac", "silent_header.wav"):
        assert name in message
    assert len(caught) == 1
    assert dataset.label_names == ["high", "low"] and len(dataset) == 4
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["x"].shape == (1, 2000)
        assert torch.isfinite(item["x"]).all() and item["x"].abs().max() <= 0.95 + 1e-5
    # Every file comes out at 8 kHz with its tone where it was (resampled, not reinterpreted).
    # The files differ in duration, which identifies them after loading.
    waves = {round(dataset.waveform(i).shape[1] / RATE, 2): dataset.waveform(i)[0].numpy() for i in range(len(dataset))}
    assert sorted(waves) == [0.1, 0.2, 0.3, 0.4]
    assert abs(peak_frequency(waves[0.3], RATE) - 440) < 15      # the 16 kHz stereo WAV
    assert abs(peak_frequency(waves[0.2], RATE) - 1000) < 25     # the 44.1 kHz FLAC
    assert abs(peak_frequency(waves[0.4], RATE) - 300) < 15      # the 22.05 kHz OGG


def test_stereo_is_mixed_to_mono_or_kept(tmp_path, config):
    left, right = sine(500, 0.25, RATE, 0.6), sine(500, 0.25, RATE, 0.2)
    write(tmp_path / "a" / "x.wav", np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    data = dict(config["data"], normalize="none")
    mono = folder_dataset(tmp_path, data, random_crop=False)[0]["x"]
    assert mono.shape == (1, 2000)
    assert torch.allclose(mono[0], torch.from_numpy((left + right) / 2), atol=1e-6)
    stereo = folder_dataset(tmp_path, dict(data, channels=2), random_crop=False)[0]["x"]
    assert stereo.shape == (2, 2000)
    assert torch.allclose(stereo[0], torch.from_numpy(left), atol=1e-6)
    assert torch.allclose(stereo[1], torch.from_numpy(right), atol=1e-6)


def test_labels_from_file_name_pattern(tmp_path, config):
    for name in ("3_alice_0", "3_bob_1", "7_alice_0", "7_carol_12"):
        write(tmp_path / f"{name}.wav", sine(300, 0.1, RATE), RATE)
    write(tmp_path / "junk.wav", sine(300, 0.1, RATE), RATE)
    with pytest.warns(UserWarning, match="junk.wav"):
        dataset = folder_dataset(tmp_path, dict(config["data"], labels="pattern"), random_crop=False)
    assert dataset.label_names == ["3", "7"] and sorted(dataset.labels) == [0, 0, 1, 1]
    match = pattern_regex("{label}_{speaker}_{take}").match("seven_jackson_12")
    assert match.groupdict() == {"label": "seven", "speaker": "jackson", "take": "12"}
    with pytest.raises(ValueError, match="no {label} field"):
        pattern_regex("{speaker}_{take}")


def test_speech_commands_and_yesno_layouts(tmp_path, config):
    speech = tmp_path / "sc" / "SpeechCommands" / "speech_commands_v0.02"
    for word in ("yes", "no"):
        for take in range(2):
            write(speech / word / f"0a7c2a8d_nohash_{take}.wav", sine(300 + 100 * take, 1.0, 16000), 16000)
    write(speech / "_background_noise_" / "white_noise.wav", np.random.default_rng(0).normal(size=32000) * 0.1, 16000)
    (speech / "validation_list.txt").write_text("yes/0a7c2a8d_nohash_0.wav\n")
    dataset = folder_dataset(tmp_path / "sc", config["data"], random_crop=True)
    assert dataset.label_names == ["no", "yes"] and len(dataset) == 4

    yesno = tmp_path / "yesno" / "waves_yesno"
    for name in ("0_0_1_0_1_0_1_1", "1_1_1_0_0_1_0_0"):
        write(yesno / f"{name}.wav", sine(250, 0.5, 8000), 8000)
    dataset = folder_dataset(tmp_path / "yesno", config["data"], random_crop=False)
    assert dataset.label_names == ["waves_yesno"] and len(dataset) == 2


def test_nothing_readable_is_an_error(tmp_path, config):
    (tmp_path / "bad.wav").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the 1 audio files"):
        folder_dataset(tmp_path, config["data"], random_crop=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        folder_dataset(tmp_path / "empty", config["data"], random_crop=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_dataset(tmp_path / "missing", config["data"], random_crop=False)


def test_random_crop_takes_windows_and_fixed_crop_starts_at_zero(tmp_path, config):
    ramp = np.linspace(-0.9, 0.9, RATE).astype(np.float32)  # 1 s, each sample value unique
    write(tmp_path / "a" / "ramp.wav", ramp, RATE, subtype="FLOAT")
    data = dict(config["data"], normalize="none")
    fixed = folder_dataset(tmp_path, data, random_crop=False)
    assert torch.equal(fixed[0]["x"][0], torch.from_numpy(ramp[:2000]))
    cropped = folder_dataset(tmp_path, data, random_crop=True)
    torch.manual_seed(0)
    offsets = set()
    for _ in range(10):
        window = cropped[0]["x"][0].numpy()
        offset = int(np.argmin(np.abs(ramp - window[0])))
        assert np.allclose(window, ramp[offset:offset + 2000])
        offsets.add(offset)
    assert len(offsets) > 5


def test_short_files_are_zero_padded(tmp_path, config):
    write(tmp_path / "a" / "short.wav", sine(400, 0.1, RATE), RATE)
    item = folder_dataset(tmp_path, config["data"], random_crop=True)[0]["x"]
    # Loudness-normalised: the tone's RMS is 0.1, so its peak is 0.1 * sqrt(2).
    assert item.shape == (1, 2000) and item[0, 800:].abs().max() == 0
    assert item[0, :800].abs().max() == pytest.approx(0.1 * 2**0.5, rel=0.01)


def test_lazy_loading_reads_on_access(tmp_path, config):
    make_mixed_folder(tmp_path)
    with pytest.warns(UserWarning, match="corrupt.wav"):
        lazy = folder_dataset(tmp_path, dict(config["data"], preload=False), random_crop=False)
    with pytest.warns(UserWarning):
        eager = folder_dataset(tmp_path, config["data"], random_crop=False)
    assert len(lazy) == len(eager)
    for i in range(len(eager)):
        assert torch.allclose(lazy[i]["x"], eager[i]["x"])


def refuse_to_decode(files, **settings):
    raise RuntimeError("decoded again")


def refuse_to_read_headers(files, **settings):
    raise RuntimeError("headers read again")


def test_preloaded_clips_are_decoded_once_into_a_store_that_later_starts_map(tmp_path, config, monkeypatch):
    # The rate is taken from the files' headers, which are kept too.
    root, data = tmp_path / "data", dict(config["data"], cache_dir=str(tmp_path / "cache"), sample_rate=0)
    make_mixed_folder(root)
    with pytest.warns(UserWarning) as first:
        stored = folder_dataset(root, dict(data), random_crop=False)
    with pytest.warns(UserWarning):
        lazy = folder_dataset(root, dict(data, preload=False), random_crop=False)
        in_memory = folder_dataset(root, dict(data, cache=False), random_crop=False)
    monkeypatch.setattr(data_module, "decode_recordings", refuse_to_decode)
    monkeypatch.setattr(data_module, "read_headers", refuse_to_read_headers)
    with pytest.warns(UserWarning) as second:
        again = folder_dataset(root, dict(data), random_crop=False)
    assert [str(w.message) for w in second] == [str(w.message) for w in first]  # the bad files named again
    assert len(stored) == 4
    for other in (again, lazy, in_memory):
        assert other.labels == stored.labels
        assert all(torch.equal(other.waveform(i), stored.waveform(i)) for i in range(len(stored)))
    # To a DataLoader worker the stored clips travel as the store's folder, mapped again there.
    samples = sum(stored.waveform(i).numel() for i in range(len(stored))) * 4
    assert len(pickle.dumps(stored.sources)) < samples / 4 and len(pickle.dumps(in_memory.sources)) > samples
    restored = pickle.loads(pickle.dumps(stored.sources))
    assert all(torch.equal(restored[i], stored.waveform(i)) for i in range(len(stored)))
    # Another setting that shapes the clips, or a changed file, is decoded again.
    with pytest.raises(RuntimeError, match="decoded again"):
        folder_dataset(root, dict(data, trim_db=20.0), random_crop=False)
    write(root / "low" / "native.wav", sine(250, 0.1, RATE), RATE)
    with pytest.raises(RuntimeError, match="headers read again"):
        folder_dataset(root, dict(data), random_crop=False)
    monkeypatch.setattr(data_module, "read_headers", read_headers)
    with pytest.raises(RuntimeError, match="decoded again"):
        folder_dataset(root, dict(data), random_crop=False)


def test_split_is_stable_when_files_are_added(tmp_path):
    files = [tmp_path / f"{i}.wav" for i in range(200)]
    reference, heldout = split_files(files, tmp_path, 0.2)
    assert 20 < len(heldout) < 60 and len(reference) + len(heldout) == 200
    more_reference, more_heldout = split_files(files + [tmp_path / "new.wav"], tmp_path, 0.2)
    assert set(heldout) <= set(more_heldout) and set(reference) <= set(more_reference)


def padded_tone(seconds: float, rate: int, *, before: float = 0.3, after: float = 0.3, noise_db: float = -80.0,
                amplitude: float = 0.5) -> np.ndarray:
    """A tone of ``seconds`` between silences, over white noise ``noise_db`` under the tone's level."""
    tone = sine(440, seconds, rate, amplitude)
    wave = np.concatenate([np.zeros(round(before * rate)), tone, np.zeros(round(after * rate))])
    noise_rms = amplitude / np.sqrt(2) * 10 ** (noise_db / 20)
    return (wave + np.random.default_rng(0).normal(0.0, noise_rms, wave.shape)).astype(np.float32)


@pytest.mark.parametrize("noise_db", [-80.0, -20.0])
def test_trimming_keeps_the_sound_and_two_frames_either_side(noise_db):
    """In digital silence and under a noise floor 20 dB down (within 40 dB of the tone, cut by
    the floor rule) alike, the tone is kept whole with two frames of margin, and no more."""
    rate, frame = 8000, 160   # 20 ms frames
    wave = torch.from_numpy(padded_tone(0.2, rate, noise_db=noise_db))[None]
    trimmed = trim_silence(wave, rate, 40.0)
    # The first and last frames of sound overlap the tone by up to a frame, and two frames of
    # margin go before and after them: two to three frames of margin on each side of the tone.
    onset = int(torch.nonzero(trimmed[0].abs() > 0.2)[0])
    assert 2 * frame <= onset <= 3 * frame
    assert 1600 + 4 * frame <= trimmed.shape[-1] <= 1600 + 6 * frame
    assert torch.equal(trim_silence(wave, rate, 0.0), wave)


def test_a_recording_without_silence_is_kept_whole():
    rate = 8000
    tone = torch.from_numpy(sine(440, 0.5, rate))[None]
    assert torch.equal(trim_silence(tone, rate, 40.0), tone)


def test_loudness_normalisation_sets_the_rms_unless_the_peak_would_pass_its_limit():
    quiet = torch.from_numpy(sine(300, 0.5, RATE, 0.01))[None]
    assert float(loudness_normalise(quiet).pow(2).mean().sqrt()) == pytest.approx(TARGET_RMS, rel=1e-4)
    spiky = quiet.clone()
    spiky[0, 100] = 0.9  # one click: scaling the tone to RMS 0.1 would push it far past full scale
    levelled = loudness_normalise(spiky)
    assert float(levelled.abs().max()) == pytest.approx(PEAK, rel=1e-5)
    assert float(levelled.pow(2).mean().sqrt()) < TARGET_RMS
    assert torch.equal(loudness_normalise(torch.zeros(1, 10)), torch.zeros(1, 10))


def test_rate_and_length_come_from_the_recordings(tmp_path, config):
    for k, seconds in enumerate([0.2, 0.3, 0.4, 0.5]):
        write(tmp_path / "a" / f"t{k}.wav", padded_tone(seconds, 16000), 16000)
    write(tmp_path / "b" / "low.wav", padded_tone(0.25, 8000), 8000)
    data = dict(config["data"], sample_rate=0, duration=0.0, max_sample_rate=16000)
    dataset = folder_dataset(tmp_path, data, random_crop=False)
    assert data["sample_rate"] == dataset.sample_rate == 16000   # four of the five files
    # The 98th percentile of the trimmed lengths lies between the two longest (0.4 s, 0.5 s plus 4 to
    # 6 frames of 20 ms of margin), 92 % of the way to the longest, rounded up to 10 ms.
    assert 0.57 <= data["duration"] <= 0.62 and dataset.length == round(data["duration"] * 16000)
    assert "16,000 Hz (that of 4 of the 5 recordings)" in dataset.choices[0]
    assert "98th percentile of 5 recordings" in dataset.choices[1]
    capped = dict(config["data"], sample_rate=0, duration=0.0, max_sample_rate=8000, max_duration=0.3)
    dataset = folder_dataset(tmp_path, capped, random_crop=False)
    assert (capped["sample_rate"], capped["duration"]) == (8000, 0.3)
    assert "resampled to data.max_sample_rate" in dataset.choices[0] and "data.max_duration" in dataset.choices[1]
    lazy = dict(config["data"], sample_rate=0, duration=0.0, max_sample_rate=16000, preload=False)
    folder_dataset(tmp_path, lazy, random_crop=False)
    assert (lazy["sample_rate"], lazy["duration"]) == (data["sample_rate"], data["duration"])


def test_settings_given_are_kept_and_old_runs_keep_their_recordings_whole(tmp_path, domain, config):
    write(tmp_path / "a" / "t.wav", padded_tone(0.2, 16000), 16000)
    data = dict(config["data"])
    assert folder_dataset(tmp_path, data, random_crop=False).choices == []
    assert (data["sample_rate"], data["duration"]) == (config["data"]["sample_rate"], config["data"]["duration"])
    saved = {"data": {key: value for key, value in config["data"].items() if key != "trim_db"}}
    assert domain.upgrade_config(saved)["data"]["trim_db"] == 0.0
