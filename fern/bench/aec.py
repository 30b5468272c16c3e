"""Echo cancellers compared on real speech through a real audio server (a private PulseAudio with a loopback).

    python -m fern.bench.aec [--runs 3]
    python -m fern.bench.aec --barge-in [--runs 3]   # speech onsets over the agent: what the VAD and barge-in see

The agent plays a recorded human prompt into its speaker (null sink agentB), a PulseAudio loopback brings it back
into its microphone (userA) at speaking level, and the user talks over it, then alone. The live I/O records the
microphone and the aligned echo reference (echo=none); every canceller then processes the same recording block by
block (20 ms), so they are compared on identical input. Printed per canceller (median over runs):
ERLE on far-end-only speech after 1.5 s, the near end's level change when the user talks alone, the near end's
level over the echo residue in double talk, and CPU time per 20 ms block.

``pyaec`` (a Rust port of Speex's MDF) is measured too when importable (not a FERN dependency).

``--barge-in``: the agent's espeak reply is recorded through the loop (echo only), then asterisk prompts are mixed
into the microphone at known onsets (one per trial; the null-sink loop is linear, so a sum is what double talk
records), at echo gains 0 (no echo: headset, unlooped sinks), 0.1, 0.3 and 1 (the recording scaled). Each trial runs
the canceller (with and without io.echo_bypass_margin_db's NearEndGate), webrtcvad (aggressiveness 2, 20 ms) and the
pipeline's segmenter + barge-in rule (speech start 60 ms, then min_speech_ms=200 of voiced audio from it, judged
once): onset delay (first voiced frame after the onset), barge-in delay, misses; and barge-ins on the echo alone.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from contextlib import contextmanager

import numpy as np


@contextmanager
def agent_speaking(far: np.ndarray, loop_gain: float = 1.0):
    """A private PulseAudio whose agent speaker loops back into its microphone at ``loop_gain``: ``far`` (24 kHz)
    goes to the speaker, the microphone is read in a thread until the block ends. Yields (pulse, audio, t0)."""
    from fern.io.live import LiveAudio
    from fern.io.pulse import PrivatePulse

    with PrivatePulse() as pa:
        pa.route_agent()
        pa.loopback("agentB.monitor", "userA", latency_ms=20, gain=loop_gain)
        audio = LiveAudio(echo="none")
        audio.keep_reference = True
        audio.start()
        stop = threading.Event()

        def read() -> None:
            for _ in audio.timed_blocks():
                if stop.is_set():
                    return

        reader = threading.Thread(target=read)
        reader.start()
        try:
            time.sleep(0.3)
            t0 = audio.now()
            for i in range(0, far.size, 4800):
                audio.sink.play(far[i:i + 4800], 24000, audio.now())
            yield pa, audio, t0
        finally:
            stop.set()
            reader.join()
            audio.close()


def record_loop(agent_s: float = 7.0, loop_gain: float = 1.0) -> dict:
    from fern.audio import read_wav

    far = read_wav("/usr/share/asterisk/sounds/en/demo-congrats.wav", 24000)[:int(agent_s * 24000)]
    near = read_wav("/usr/share/asterisk/sounds/en/tt-weasels.wav", 16000)
    with agent_speaking(far, loop_gain) as (pa, audio, t0):
        time.sleep(4.5)
        t_talk = audio.now()
        pa.play(near, 16000, "userA")
        time.sleep(max(0.0, t0 + agent_s + 0.5 - audio.now()))
        t_alone = audio.now()
        pa.play(near, 16000, "userA")
        time.sleep(0.3)
        out = {"mic": audio.track("user", 16000), "ref": audio.track("reference", 16000), "t0": t0,
               "t_talk": t_talk, "t_alone": t_alone, "near_s": near.size / 16000}
    n = min(out["mic"].size, out["ref"].size)
    out["mic"], out["ref"] = out["mic"][:n], out["ref"][:n]
    return out


class _PyAec:
    name = "pyaec"

    def __init__(self) -> None:
        import pyaec

        self._aec = pyaec.Aec(160, 4800, 16000, True)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, near.size, 160):
            n = np.clip(near[i:i + 160] * 32767, -32768, 32767).astype(np.int16).tolist()
            f = np.clip(far[i:i + 160] * 32767, -32768, 32767).astype(np.int16).tolist()
            out.append(np.array(self._aec.cancel_echo(n, f), np.float32) / 32768.0)
        return np.concatenate(out)


def cancellers() -> dict:
    from fern.echo import SpeexEchoCanceller, make_echo_canceller

    made = {"webrtc (io.echo=aec)": lambda: make_echo_canceller("aec"),
            "speex (measured, not offered)": lambda: SpeexEchoCanceller()}
    try:
        import pyaec  # noqa: F401

        made["pyaec"] = _PyAec
    except ImportError:
        pass
    return made


def evaluate(rec: dict, make) -> dict:
    from fern.echo import erle_db

    aec = make()
    mic, ref = rec["mic"], rec["ref"]
    out, times = [], []
    for i in range(0, mic.size - 319, 320):
        t = time.perf_counter()
        out.append(aec.process(mic[i:i + 320], ref[i:i + 320]))
        times.append(time.perf_counter() - t)
    clean = np.concatenate(out)
    idx = lambda t: int(t * 16000)  # noqa: E731
    far_only = slice(idx(rec["t0"] + 1.5), idx(rec["t_talk"]))
    near_only = slice(idx(rec["t_alone"] + 0.1), idx(rec["t_alone"] + rec["near_s"]))
    dt = slice(idx(rec["t_talk"] + 0.1), idx(rec["t_talk"] + rec["near_s"]))
    m = mic[:clean.size]
    residue = max(float(np.mean(clean[far_only] ** 2)), 1e-12)
    return {"erle_db": erle_db(m[far_only], clean[far_only]),
            "near_alone_db": -erle_db(m[near_only], clean[near_only]),
            "double_talk_over_residue_db": 10 * np.log10(float(np.mean(clean[dt] ** 2)) / residue),
            "cpu_ms_per_block": 1000 * statistics.median(times[50:])}


REPLY = ("Once upon a time there was a brave little dragon who lived in a cave high in the mountains. Every morning "
         "he flew over the valley to look for his friends, the birds and the rabbits, and every evening he came home "
         "tired and happy. One day a storm came and the river rose over its banks, and the dragon carried the animals "
         "one by one to the top of the hill.")
USERS = ("tt-weasels", "vm-savefolder", "vm-changeto", "conf-onlyperson", "auth-thankyou", "activated")
BLOCK = 320  # 20 ms at 16 kHz


def record_reply_echo() -> dict:
    """The agent's espeak reply played and looped back into its microphone at unity gain: mic (echo only) + ref."""
    from fern.audio import resample
    from fern.tts.espeak import EspeakSynthesizer

    synth = EspeakSynthesizer(words_per_minute=160)
    far = resample(synth.synthesize(REPLY), synth.sample_rate, 24000)
    with agent_speaking(far) as (_, audio, t0):
        time.sleep(far.size / 24000 + 1.0)
        mic, ref = audio.track("user", 16000), audio.track("reference", 16000)
        underflows = audio.output_underflows
    n = min(mic.size, ref.size)
    return {"mic": mic[:n], "ref": ref[:n], "t0": t0, "t_end": t0 + far.size / 24000, "underflows": underflows}


def _speech_flags(mic: np.ndarray, ref: np.ndarray, gate: bool) -> list[bool]:
    from fern.echo import make_echo_canceller
    from fern.echo.gate import NearEndGate
    from fern.vad.webrtc import WebRtcVad

    aec, vad, near = make_echo_canceller("aec"), WebRtcVad(2, 20), NearEndGate() if gate else None
    flags = []
    for i in range(0, mic.size - BLOCK + 1, BLOCK):
        x, r = mic[i:i + BLOCK], ref[i:i + BLOCK]
        y = aec.process(x, r)
        flags.append(vad.is_speech(near.choose(x, r, y) if near is not None else y))
    return flags


def _barge_ins(flags: list[bool], min_speech_s: float = 0.2) -> list[float]:
    """Times the pipeline's rule barges in: a speech start (segmenter), then min_speech_s of voiced audio by
    start + min_speech_s, judged once (fern.pipeline.VoicePipeline._barge_in_if_it_lasts)."""
    from fern.turn.segmenter import Checkpoint, Segmenter, SpeechStart

    seg, frame_s, pending, out = Segmenter((0.2, 0.7), 60, 200), BLOCK / 16000, None, []
    for k, voiced in enumerate(flags):
        t = (k + 1) * frame_s
        signal = seg.push(t, frame_s, voiced)
        if isinstance(signal, Checkpoint) and signal.last:
            seg.end_turn(t)
        if isinstance(signal, SpeechStart):
            pending = signal.t
        if pending is None:
            continue
        if not (seg.in_turn and not seg.paused and seg.t_start == pending):
            pending = None
        elif t + 1e-9 >= pending + min_speech_s:
            if seg.speech_s + 1e-9 >= min_speech_s:
                out.append(t)
            pending = None
    return out


def barge_in_trials(rec: dict, gain: float, gate: bool) -> dict:
    from fern.audio import read_wav

    mic, ref = rec["mic"] * gain, rec["ref"]
    onset_ms, barge_ms, misses = [], [], 0
    onsets = np.arange(rec["t0"] + 2.0, rec["t_end"] - 3.0, 1.9)
    for i, t_on in enumerate(onsets):
        user = read_wav(f"/usr/share/asterisk/sounds/en/{USERS[i % len(USERS)]}.wav", 16000)
        lead = int(np.flatnonzero(np.abs(user) > 0.01)[0])
        mixed = mic.copy()
        j = int(t_on * 16000) - lead
        mixed[j:j + user.size] += user[:mixed.size - j]
        flags = _speech_flags(mixed, ref, gate)
        k_on = int(t_on * 16000) // BLOCK
        first = next((k for k in range(k_on, min(len(flags), k_on + 100)) if flags[k]), None)
        if first is not None:
            onset_ms.append(1000 * ((first + 1) * BLOCK / 16000 - t_on))
        hits = [t for t in _barge_ins(flags) if t_on <= t <= t_on + user.size / 16000]
        if hits:
            barge_ms.append(1000 * (hits[0] - t_on))
        else:
            misses += 1
    return {"onset_ms": onset_ms, "barge_ms": barge_ms, "misses": misses, "trials": len(onsets),
            "false": len(_barge_ins(_speech_flags(mic, ref, gate)))}


def barge_in_main(runs: int) -> None:
    rows: dict[tuple[float, bool], list[dict]] = {}
    for run in range(runs):
        rec = record_reply_echo()
        print(f"run {run + 1}: reply {rec['t_end'] - rec['t0']:.1f} s, {rec['underflows']} underflows while recording")
        for gain in (0.0, 0.1, 0.3, 1.0):
            for gate in (False, True):
                rows.setdefault((gain, gate), []).append(barge_in_trials(rec, gain, gate))
    print(f"\n{'echo gain':>9} {'canceller':<22} {'onset delay ms (median, max)':>29} "
          f"{'barge-in ms (median, max)':>26} {'misses':>7} {'false on echo':>14}")
    for (gain, gate), results in rows.items():
        onset = [x for r in results for x in r["onset_ms"]]
        barge = [x for r in results for x in r["barge_ms"]]
        name = "aec + NearEndGate" if gate else "aec (AEC3 output)"
        print(f"{gain:>9.1f} {name:<22} {np.median(onset):>20.0f}, {max(onset):>6.0f} "
              f"{np.median(barge) if barge else float('nan'):>17.0f}, {max(barge, default=float('nan')):>6.0f} "
              f"{sum(r['misses'] for r in results):>3}/{sum(r['trials'] for r in results):<3} "
              f"{sum(r['false'] for r in results):>14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--barge-in", action="store_true", help="speech onsets over the agent (see the module doc)")
    args = parser.parse_args()
    if args.barge_in:
        barge_in_main(args.runs)
        return
    results: dict[str, list[dict]] = {}
    for run in range(args.runs):
        rec = record_loop()
        echo_rms = float(np.sqrt(np.mean(rec["mic"][int((rec["t0"] + 1.5) * 16000):int(rec["t_talk"] * 16000)] ** 2)))
        print(f"run {run + 1}: echo in the microphone rms {echo_rms:.3f}")
        for name, make in cancellers().items():
            results.setdefault(name, []).append(evaluate(rec, make))
    print(f"\n{'canceller':<24} {'ERLE dB':>8} {'near alone dB':>14} {'double talk dB':>15} {'CPU ms/20ms':>12}")
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{name:<24} {med['erle_db']:>8.1f} {med['near_alone_db']:>+14.1f} "
              f"{med['double_talk_over_residue_db']:>15.1f} {med['cpu_ms_per_block']:>12.3f}")


if __name__ == "__main__":
    main()
