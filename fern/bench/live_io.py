"""What real audio I/O adds to mouth-to-ear latency: the same turn through io=file timing and through a real
audio server (a private PulseAudio with null sinks).

    python -m fern.bench.live_io [--runs 5] [--device-block-ms 10] [--input-block-ms N]
                                 [--input-latency-ms N] [--output-latency-ms N]

Both paths run the same trivial agent: an energy endpointer on the 20 ms microphone blocks (a turn ends after
``--hangover-ms`` of blocks below -40 dBFS following speech) that answers with a click at once. So the figure isolates
the I/O: no model runs.
- io=file: WavFileSource (real-time paced) + TimelineSink. Mouth-to-ear = the click's time on the timeline minus the
  end of speech in the WAV (on the session clock of the replay).
- io=live: the WAV is played into sink userA (pacat), the agent's microphone is userA.monitor, its speaker agentB.
  Mouth-to-ear = the click's onset recorded on agentB.monitor minus the end of speech recorded on userA.monitor, both
  recorded by parec outside the agent, on one clock.
Added I/O latency = live - file, medians over runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

RATE = 16000
THRESHOLD = 0.01  # -40 dBFS


def _end_of_speech(audio: np.ndarray, rate: int) -> int:
    return int(np.flatnonzero(np.abs(audio) > THRESHOLD)[-1])


def _respond(blocks, sink, clock, hangover_ms: int, block_ms: int = 20) -> float:
    """Consume blocks until a turn ends; then play a click. Returns the click's heard-at time."""
    click = np.zeros(2400, np.float32)
    click[:240] = 0.5
    spoke, quiet = False, 0
    for block in blocks:
        if np.max(np.abs(block)) > THRESHOLD:
            spoke, quiet = True, 0
        elif spoke:
            quiet += block_ms
            if quiet >= hangover_ms:
                return sink.play(click, 24000, clock())
    raise RuntimeError("the turn never ended")


def file_run(wav: str, hangover_ms: int) -> float:
    from fern.audio import read_wav
    from fern.io.file import TimelineSink, WavFileSource

    source = WavFileSource(wav, RATE, 20, realtime=True, trailing_silence_s=1.0)
    sink = TimelineSink()
    t0 = time.perf_counter()
    clock = lambda: time.perf_counter() - t0  # noqa: E731  (the replay's session clock: 0 = first sample)
    heard = _respond(source.blocks(), sink, clock, hangover_ms)
    source.close()
    return heard - _end_of_speech(read_wav(wav, RATE), RATE) / RATE


def live_run(wav: str, hangover_ms: int, **settings) -> tuple[float, dict]:
    from fern.audio import read_wav
    from fern.io.live import LiveAudio
    from fern.io.pulse import PrivatePulse

    speech = read_wav(wav, RATE)
    with PrivatePulse() as pa:
        pa.route_agent()
        mouth = pa.record("userA.monitor").wait_ready()
        ears = pa.record("agentB.monitor").wait_ready()
        audio = LiveAudio(echo="none", **settings)
        audio.start()
        time.sleep(0.3)
        player = pa.play(np.concatenate([speech, np.zeros(RATE // 2, np.float32)]), RATE, "userA", wait=False)
        _respond(audio.source.blocks(), audio.sink, audio.now, hangover_ms)
        time.sleep(0.3)
        player.wait()
        said, heard = mouth.stop(), ears.stop()
        info = {"output_latency_ms": 1000 * audio.output_latency_s, "input_latency_ms": 1000 * audio.input_latency_s,
                "rate": audio.in_rate}
        audio.close()
    t_end = mouth.time_of(_end_of_speech(said, mouth.rate))
    t_click = ears.time_of(int(np.flatnonzero(np.abs(heard) > 0.1)[0]))
    return t_click - t_end, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--wav", default="/usr/share/asterisk/sounds/en/tt-weasels.wav")
    parser.add_argument("--hangover-ms", type=int, default=300)
    parser.add_argument("--output-latency-ms", type=float, default=None)
    parser.add_argument("--input-latency-ms", type=float, default=None)
    parser.add_argument("--device-block-ms", type=float, default=10.0, help="io.device_block_ms")
    parser.add_argument("--input-block-ms", type=float, default=None, help="io.input_block_ms")
    args = parser.parse_args()
    files, lives = [], []
    for run in range(args.runs):
        files.append(file_run(args.wav, args.hangover_ms))
        live, info = live_run(args.wav, args.hangover_ms, output_latency_ms=args.output_latency_ms,
                              input_latency_ms=args.input_latency_ms, device_block_ms=args.device_block_ms,
                              input_block_ms=args.input_block_ms)
        lives.append(live)
        print(f"run {run + 1}: io=file {1000 * files[-1]:.1f} ms, io=live {1000 * live:.1f} ms "
              f"(device {info['rate']} Hz, reported latency in {info['input_latency_ms']:.0f} / "
              f"out {info['output_latency_ms']:.0f} ms)")
    f, live = statistics.median(files), statistics.median(lives)
    print(f"mouth-to-ear (end of speech -> first agent sample), hangover {args.hangover_ms} ms, median of {args.runs}: "
          f"io=file {1000 * f:.1f} ms, io=live {1000 * live:.1f} ms, "
          f"added by real audio I/O {1000 * (live - f):.1f} ms")


if __name__ == "__main__":
    main()
