"""Echo cancellers compared on real speech through a real audio server (a private PulseAudio with a loopback).

    python -m fern.bench.aec [--runs 3]

The agent plays a recorded human prompt into its speaker (null sink agentB), a PulseAudio loopback brings it back
into its microphone (userA) at speaking level, and the user talks over it, then alone. The live I/O records the
microphone and the aligned echo reference (echo=none); every canceller then processes the same recording block by
block (20 ms), so they are compared on identical input. Printed per canceller (median over runs):
ERLE on far-end-only speech after 1.5 s, the near end's level change when the user talks alone, the near end's
level over the echo residue in double talk, and CPU time per 20 ms block.

``pyaec`` (a Rust port of Speex's MDF) is measured too when importable (not a FERN dependency).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np


def record_loop(agent_s: float = 7.0, loop_gain: float = 1.0) -> dict:
    from fern.audio import read_wav
    from fern.io.live import LiveAudio
    from fern.io.pulse import PrivatePulse

    far = read_wav("/usr/share/asterisk/sounds/en/demo-congrats.wav", 24000)[:int(agent_s * 24000)]
    near = read_wav("/usr/share/asterisk/sounds/en/tt-weasels.wav", 16000)
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
        time.sleep(0.3)
        t0 = audio.now()
        for i in range(0, far.size, 4800):
            audio.sink.play(far[i:i + 4800], 24000, audio.now())
        time.sleep(4.5)
        t_talk = audio.now()
        pa.play(near, 16000, "userA")
        time.sleep(max(0.0, t0 + agent_s + 0.5 - audio.now()))
        t_alone = audio.now()
        pa.play(near, 16000, "userA")
        time.sleep(0.3)
        stop.set()
        reader.join()
        out = {"mic": audio.track("user", 16000), "ref": audio.track("reference", 16000), "t0": t0,
               "t_talk": t_talk, "t_alone": t_alone, "near_s": near.size / 16000}
        audio.close()
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
    from fern.echo import make_echo_canceller

    made = {"webrtc (io.echo=aec)": lambda: make_echo_canceller("aec"),
            "speex (io.echo=speex)": lambda: make_echo_canceller("speex")}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
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
