"""io=live through a real PulseAudio server (no mocks): capture, playback timing, stop, echo, device errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fern.audio import resample
from fern.errors import AudioDeviceError
from tests.live.conftest import consume, onsets

pytestmark = pytest.mark.models  # real models, real processes or a real audio server: the full tier

CLICK_RATE = 24000
# echo tests measure the canceller, not the latency: a deeper output buffer keeps a loaded CI machine from underrunning
# (each underrun shifts the echo path under the canceller, which then re-converges)
ROBUST = {"device_block_ms": 20, "output_latency_ms": 80}


def _click(n: int = 2400) -> np.ndarray:
    click = np.zeros(n, np.float32)
    click[:240] = 0.5 * np.sin(np.arange(240) / 3.0)
    return click


def test_source_captures_speech_played_into_userA(pulse, live_audio, human_speech):
    audio = live_audio()
    ears = pulse.record("userA.monitor").wait_ready()  # an independent observer of what the microphone hears
    speech = human_speech("tt-weasels", 16000)  # "Weasels have eaten our phone system", 2 s
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(consume(audio, speech.size / 16000 + 1.5)))
    reader.start()
    time.sleep(0.3)
    pulse.play(speech, 16000, "userA")
    reader.join()
    heard = ears.stop()
    times = np.array([t for t, _ in got])
    mic = np.concatenate([b for _, b in got])
    assert mic.size == len(got) * audio.block and all(b.size == 320 for _, b in got)  # 20 ms at 16 kHz
    assert np.all(np.diff(times) > 0)
    # level: the capture is the signal played, not attenuated or clipped (rms within 1 dB)
    voiced = np.abs(mic) > 0.01
    ratio_db = 20 * np.log10(np.sqrt(np.mean(mic[voiced] ** 2)) / np.sqrt(np.mean(speech[np.abs(speech) > 0.01] ** 2)))
    assert abs(ratio_db) < 1.0, ratio_db
    # content: the captured waveform is the speech (cross-correlation peak)
    start = onsets(mic, 16000, 0.05)[0]
    ref = speech[onsets(speech, 16000, 0.05)[0]:][:4000]  # 250 ms
    seg = mic[start - 100:start - 100 + ref.size + 200]
    corr = np.correlate(seg, ref, "valid") / (np.linalg.norm(ref) * np.linalg.norm(seg) + 1e-9)
    assert corr.max() > 0.9
    # timing: the block times put the speech onset where the outside observer heard it (same session clock)
    t_mic = times[0] - audio.block_ms / 1000 + (start + 1) / 16000
    t_obs = ears.time_of(onsets(heard, ears.rate, 0.05)[0]) - audio._origin
    assert abs(t_mic - t_obs) < 0.03, f"capture stamped {1000 * (t_mic - t_obs):+.1f} ms from the observer"


def test_play_returns_when_the_speaker_really_plays(pulse, live_audio):
    audio = live_audio()
    ears = pulse.record("agentB.monitor").wait_ready()
    chunks = []
    for k in range(8):
        chunks.append(audio.sink.play_chunk(_click(), CLICK_RATE))
        time.sleep(0.25 + 0.05 * (k % 3))
    # record until the last click has been heard (its predicted time), not a fixed while after the call: on a loaded
    # machine the queue holds it longer, and a fixed 0.3 s once cut it off (7 clicks of 8)
    time.sleep(max(0.3, chunks[-1].heard_at + 0.3 - audio.now()))
    recorded = ears.stop()
    t_rec = np.array([ears.time_of(i) - audio._origin for i in onsets(recorded, ears.rate, 0.1)])
    assert t_rec.size == len(chunks), f"{t_rec.size} clicks recorded of {len(chunks)}"
    predicted = np.array([c.heard_at for c in chunks])  # what play() returned
    measured = np.array([c.started_at for c in chunks])  # stamped when the device took the first sample
    offset_ms = 1000 * (t_rec - predicted)
    measured_ms = 1000 * (t_rec - measured)
    print(f"heard-at vs agentB.monitor: median {np.median(offset_ms):+.1f} ms, "
          f"range {offset_ms.min():+.1f}..{offset_ms.max():+.1f} ms; measured start "
          f"{np.median(measured_ms):+.1f} ms; {audio.output_underflows} underflows")
    # the measured start is right whatever happened; play()'s prediction too unless the device underran between
    # the call and the playback (a loaded machine: the timeline then moves later by the gap)
    assert np.all(np.abs(measured_ms) < 30), measured_ms
    undisturbed = np.abs(measured - predicted) < 0.002
    assert undisturbed.sum() >= len(chunks) // 2 or audio.output_underflows > 5
    assert np.all(np.abs(offset_ms[undisturbed]) < 30), offset_ms
    assert np.ptp(measured_ms) < 20, measured_ms  # a steady mapping, not jitter


def test_stop_silences_the_speaker_within_one_block_and_counts_what_played(pulse, live_audio, human_speech):
    audio = live_audio()
    ears = pulse.record("agentB.monitor").wait_ready()
    speech = human_speech("conf-onlyperson", CLICK_RATE)  # 3 s of speech
    chunks = [audio.sink.play_chunk(speech[i:i + 4800], CLICK_RATE) for i in range(0, speech.size, 4800)]
    time.sleep(1.2)
    t_silent = audio.sink.stop(audio.now())
    report = audio.sink.last_stop
    time.sleep(0.5)
    recorded = ears.stop()
    loud = np.flatnonzero(np.abs(recorded) > 0.003)
    t_last = ears.time_of(loud[-1]) - audio._origin
    block_s = audio.block_ms / 1000
    print(f"stop: requested {report.t_requested:.3f}, silent predicted {t_silent:.3f}, "
          f"last sound on agentB {t_last:.3f} ({1000 * (t_last - report.t_requested):.0f} ms after the call; "
          f"output latency {1000 * audio.output_latency_s:.0f} ms)")
    # nothing is heard later than what was already in the device buffer (its latency) + one block
    assert t_last - report.t_requested <= audio.output_latency_s + block_s + 0.015
    assert abs(t_last - t_silent) < 0.03
    # accounting: played samples = what reached the speaker; later chunks dropped whole
    played = sum(c.played_samples for c in chunks)
    assert all(c.done for c in chunks)
    assert report.chunks and all(c.stopped for c in report.chunks)
    # which sample of the speech was the last one heard: match the end of the recording against the speech (robust
    # to underrun gaps, which move time but not content)
    tail = resample(recorded[loud[-1] - ears.rate // 5:loud[-1] + 1], ears.rate, CLICK_RATE)
    corr = np.correlate(speech, tail, "valid")
    last_heard = int(np.argmax(corr)) + tail.size
    print(f"last sample heard: {last_heard} of the speech; counted as played: {played}")
    assert abs(last_heard - played) < 0.03 * CLICK_RATE
    assert 0 < played < speech.size
    assert audio.sink.played_until() == pytest.approx(t_silent, abs=0.03)


def _double_talk(pulse, audio, human_speech, agent_s: float = 7.0):
    """Agent speaks (real speech) through the loopback; the user speaks over it from 4.5 s, then alone."""
    far = human_speech("demo-congrats", CLICK_RATE)[:int(agent_s * CLICK_RATE)]
    near = human_speech("tt-weasels", 16000)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(consume(audio, agent_s + 4.0)))
    reader.start()
    t0 = audio.now()
    for i in range(0, far.size, 4800):  # TTS-like 200 ms chunks
        audio.sink.play(far[i:i + 4800], CLICK_RATE, audio.now())
    time.sleep(4.5)
    t_talk = audio.now()
    pulse.play(near, 16000, "userA")  # the user speaks over the agent, then the agent ends and the user goes on
    time.sleep(max(0.0, t0 + agent_s + 0.5 - audio.now()))
    t_alone = audio.now()
    pulse.play(near, 16000, "userA")
    reader.join()
    raw = audio.track("user", 16000)
    clean = audio.track("user_processed", 16000)
    return t0, t_talk, t_alone, near.size / 16000, raw, clean


@pytest.mark.parametrize("mode,floor_db", [("aec", 30.0)])  # measured 59 dB (python -m fern.bench.aec)
def test_echo_canceller_removes_the_agent_and_keeps_the_user(pulse, live_audio, human_speech, mode, floor_db):
    from fern.echo import erle_db

    pulse.loopback("agentB.monitor", "userA", latency_ms=20)
    audio = live_audio(echo=mode, **ROBUST)
    t0, t_talk, t_alone, near_s, raw, clean = _double_talk(pulse, audio, human_speech)
    n = min(raw.size, clean.size)
    raw, clean = raw[:n], clean[:n]
    idx = lambda t: int(t * 16000)  # noqa: E731  (tracks are on the session clock)
    # far end only, after a second to converge: the echo must drop by the floor
    far_only = slice(idx(t0 + 1.5), idx(t_talk))
    erle = erle_db(raw[far_only], clean[far_only])
    # near end alone: the user's speech is kept (level within 3 dB)
    near_only = slice(idx(t_alone + 0.1), idx(t_alone + near_s))
    keep_db = -erle_db(raw[near_only], clean[near_only])
    # double talk: the user's words survive (the processed mic is still speech, much louder than the far-only residue)
    dt = slice(idx(t_talk + 0.1), idx(t_talk + near_s))
    dt_vs_residue_db = 10 * np.log10(np.mean(clean[dt] ** 2) / max(np.mean(clean[far_only] ** 2), 1e-12))
    print(f"echo={mode}: ERLE {erle:.1f} dB, near-end alone {keep_db:+.1f} dB, "
          f"double talk {dt_vs_residue_db:.1f} dB over the echo residue")
    assert erle >= floor_db
    assert keep_db > -3.0
    assert dt_vs_residue_db > 10.0


def test_without_aec_the_echo_is_all_there(pulse, live_audio, human_speech):
    """The control for the test above: same loop, no canceller, no reduction (so the ERLE is the canceller's)."""
    from fern.echo import erle_db

    pulse.loopback("agentB.monitor", "userA", latency_ms=20)
    audio = live_audio(echo="none", **ROBUST)
    t0, t_talk, _, _, raw, clean = _double_talk(pulse, audio, human_speech, agent_s=5.0)
    far_only = slice(int((t0 + 1.5) * 16000), int(t_talk * 16000))
    assert np.sqrt(np.mean(raw[far_only] ** 2)) > 0.02  # the echo is at speaking level in the microphone
    assert abs(erle_db(raw[far_only], clean[far_only])) < 0.5


def test_half_duplex_ignores_the_microphone_while_the_agent_speaks(pulse, live_audio, human_speech):
    pulse.loopback("agentB.monitor", "userA", latency_ms=20)
    audio = live_audio(half_duplex=True, half_duplex_tail_ms=250, **ROBUST)
    far = human_speech("tt-weasels", CLICK_RATE)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(consume(audio, 4.0)))
    reader.start()
    time.sleep(0.3)
    chunk = audio.sink.play_chunk(far, CLICK_RATE)
    reader.join()
    t_end = chunk.heard_until
    during = np.concatenate([b for t, b in got if chunk.heard_at <= t <= t_end + 0.25])
    after = np.concatenate([b for t, b in got if t > t_end + 0.35])
    raw = audio.track("user", 16000)
    echo = raw[int(chunk.heard_at * 16000):int(t_end * 16000)]
    assert np.sqrt(np.mean(echo ** 2)) > 0.02  # the agent's voice did reach the microphone...
    assert np.all(during == 0.0)  # ...and the pipeline got silence instead
    assert after.size > 0 and audio.agent_audible(chunk.heard_at + 0.1)
    assert not audio.agent_audible(t_end + 0.5)


def test_timeline_holds_both_sides_on_one_clock(pulse, live_audio, human_speech):
    pulse.loopback("agentB.monitor", "userA", latency_ms=20)
    audio = live_audio()
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(consume(audio, 2.0)))
    reader.start()
    time.sleep(0.5)
    chunk = audio.sink.play_chunk(_click(), CLICK_RATE)
    reader.join()
    heard_at = chunk.started_at  # measured when the device took it (play()'s prediction: chunk.heard_at)
    assert abs(chunk.started_at - chunk.heard_at) < 0.002 or audio.output_underflows
    agent = audio.sink.track("agent")
    user = audio.sink.track("user")  # the microphone, which hears the click through the loopback
    t_agent = onsets(agent, CLICK_RATE, 0.1)[0] / CLICK_RATE
    t_user = onsets(user, CLICK_RATE, 0.1)[0] / CLICK_RATE
    assert t_agent == pytest.approx(heard_at, abs=0.002)
    print(f"loopback: the mic hears the agent {1000 * (t_user - t_agent):.1f} ms after it is played "
          f"(module-loopback latency 20 ms)")
    assert 0.0 <= t_user - t_agent < 0.1
    assert audio.sink.timeline().size >= max(agent.size, user.size)


# ---- device errors --------------------------------------------------------------------------------------------
def test_bad_device_name_is_one_line_listing_the_devices(pulse):
    from fern.io.live import LiveAudio

    with pytest.raises(AudioDeviceError) as err:
        LiveAudio(input_device="no-such-microphone", echo="none")
    message = str(err.value)
    assert "\n" not in message
    assert "io.input_device='no-such-microphone' matches no input device" in message
    assert "'pulse'" in message and "'default'" in message  # the devices there are
    with pytest.raises(AudioDeviceError, match=r"io.output_device=99: no such device; output devices: 0 'pulse'"):
        LiveAudio(output_device="99", echo="none")


def test_unsupported_rate_is_one_line(pulse):
    from fern.io.live import LiveAudio

    with pytest.raises(AudioDeviceError, match=r"does not support 1000000 Hz \(its default is \d+ Hz\): "
                                               r"set io.device_rate=null") as err:
        LiveAudio(device_rate=1_000_000, echo="none")
    assert "\n" not in str(err.value)


def test_no_audio_device_at_all(tmp_path, monkeypatch):
    """No sound card and no sound server: a clear line, not a PortAudio traceback."""
    from fern.io.live import LiveAudio

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # a runtime dir with no server in it
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/none")
    with pytest.raises(AudioDeviceError, match="no audio input device on this machine"):
        LiveAudio(echo="none")


def test_list_devices_from_the_command_line(pulse):
    from fern.paths import PROJECT_ROOT

    out = subprocess.run([sys.executable, "run.py", "io=live", "io.list_devices=true"], cwd=PROJECT_ROOT,
                         env=pulse.env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].split() == ["#", "name", "host", "api", "in", "out", "rate", "default"]
    assert any(line.split()[1] == "default" and line.split()[-1] == "input,output" for line in lines[1:-1])
    assert all(line.split()[-2].isdigit() or line.split()[-1].isdigit() for line in lines[1:-1])  # a rate each


def test_bad_device_from_the_command_line_exits_2_with_one_line(pulse, tmp_path):
    from fern.paths import PROJECT_ROOT

    out = subprocess.run([sys.executable, "run.py", "io=live", "io.input_device=nosuchmic", "tracking.enabled=false",
                          f"io.output_dir={tmp_path}"], cwd=PROJECT_ROOT, env=pulse.env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("fern: error:")]
    assert errors == [e for e in errors if "matches no input device; input devices: 0 'pulse', 1 'default'" in e]
    assert len(errors) == 1


# ---- what the user heard, when the speaker underruns -------------------------------------------------------------
def _hold_the_gil(seconds: float) -> None:
    """Block every Python thread, the audio callbacks included, for ``seconds`` (a C sleep that keeps the GIL): the
    speaker underruns as it does when a model's thread starves the callbacks on a loaded machine."""
    import ctypes

    ctypes.PyDLL(None).usleep(int(seconds * 1e6))


def _tone_seconds(recorded: np.ndarray, rate: int, level: float = 0.05) -> float:
    """Seconds of tone in a recording, counted in 5 ms frames (gaps between pieces are not counted)."""
    frame = rate // 200
    frames = recorded[:recorded.size // frame * frame].reshape(-1, frame)
    return float(np.count_nonzero(np.sqrt(np.mean(frames ** 2, axis=1)) > level)) * frame / rate


def _words_in(clauses: list[str], seconds: float, seconds_per_word: float) -> int:
    """Words heard in ``seconds`` of ScriptedTTS audio: whole clauses, then the share of the one being played."""
    words = 0
    for clause in clauses:
        n = len(clause.split())
        duration = max(1, n) * seconds_per_word
        if seconds >= duration:
            words, seconds = words + n, seconds - duration
            continue
        return words + int(n * seconds / duration)
    return words


def test_history_keeps_what_the_speaker_played_when_it_underran(pulse, live_audio):
    """play() predicts when each chunk will be heard; an underrun makes the speaker play the rest later. Cut after
    one, the reply must keep the words agentB really played, not the ones the prediction says were due by then."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import suppress

    from fern.chunker.clause import ClauseChunker
    from fern.clock import SessionClock
    from fern.events import Clause, UserTurn
    from fern.llm.history import ChatHistory
    from fern.responder import Responder
    from fern.testing import EventLog, ScriptedASR, ScriptedLLM, ScriptedTTS

    story = "Once upon a time, a cat lived in a tall house. It liked the sun. It slept all day long, and dreamed."
    per_word, stall_s = 0.25, 0.75
    audio = live_audio()
    clock = SessionClock()
    audio.use_clock(clock)
    ears = pulse.record("agentB.monitor").wait_ready()
    log, history = EventLog(), ChatHistory("You are FERN.", 1024)
    executor = ThreadPoolExecutor(4)
    responder = Responder(asr=ScriptedASR(["Tell me a story."]), llm=ScriptedLLM([story]),
                          chunker=ClauseChunker(first_min_words=2),
                          tts=ScriptedTTS(sample_rate=CLICK_RATE, seconds_per_word=per_word, rtf=0.05),
                          sink=audio.sink, history=history, clock=clock, emit=log.on_event, executor=executor)

    async def conversation() -> float:
        turn = UserTurn(t=clock.now(), turn_id=0, audio=np.zeros(1600, np.float32), sample_rate=16000,
                        t_speech_start=0.0, t_last_voiced=0.0)
        reply = responder.start(turn)
        while not audio.playback_log() or audio.playback_log()[0].started_at is None:
            await asyncio.sleep(0.01)
        await asyncio.sleep(max(0.0, audio.playback_log()[0].started_at + 1.0 - clock.now()))
        _hold_the_gil(stall_s)  # 1 s into the reply (4 words): the speaker runs dry for ~0.75 s
        await asyncio.sleep(1.0)
        reply.cancel()
        with suppress(asyncio.CancelledError):
            await reply.task
        return reply.t_silent

    try:
        t_silent = asyncio.run(conversation())
    finally:
        executor.shutdown()
    time.sleep(0.4)
    recorded = ears.stop()
    heard_s = _tone_seconds(recorded, ears.rate)
    clauses = [e.text for e in log.of(Clause)]
    kept = history.messages()[-1]["content"]
    expected = _words_in(clauses, heard_s, per_word)
    predicted = _words_in(clauses, t_silent - audio.playback_log()[0].heard_at, per_word)  # what play() foresaw
    print(f"underrun: {audio.output_underflows} underflows in {len(audio.underflow_events)} events, "
          f"{audio.held_blocks} blocks held; agentB played {heard_s:.2f} s = {expected} words; "
          f"kept {len(kept.split())}: {kept!r}; "
          f"play()'s predictions would say {predicted} words")
    assert audio.output_underflows >= 1  # the stall did underrun the speaker
    assert predicted >= expected + 2  # ...by enough that the predicted times are words off
    assert story.startswith(kept)
    assert abs(len(kept.split()) - expected) <= 1, (kept, heard_s)
