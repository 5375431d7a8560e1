"""Synthesized sounds, one recipe per AudioSet class of the synthetic dataset.

Each recipe is a small signal program (harmonic tones, vibrato, glides, strike trains, filtered
noise) with its own pitch, rhythm and timbre, loosely modelled on the class name so that the
names the SAVLD embeds and the sounds the tagger hears agree. Every call draws a per-clip
variation (pitch +-3 %, tempo +-10 %, phase, onset) from the generator it is given, so two clips
of one class are never identical yet stay far closer to each other than to any other class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

SAMPLE_RATE = 16_000


class _Ctx:
    """Per-call time axis, generator and the random pitch/tempo factors of one sound instance."""

    def __init__(self, rng: np.random.Generator, seconds: float, sr: int):
        self.rng, self.sr = rng, sr
        self.n = int(round(seconds * sr))
        self.t = np.arange(self.n) / sr
        self.pitch = 2.0 ** (rng.normal(0.0, 0.04))  # about +-3 % (one sixth of a tone)
        self.tempo = rng.uniform(0.9, 1.1)

    # -- oscillators --
    def harmonic(self, f0: float, n_harm: int, rolloff: float = 1.0, odd_only: bool = False,
                 vib_rate: float = 0.0, vib_depth: float = 0.0, glide: np.ndarray | None = None) -> np.ndarray:
        """Sum of harmonics k*f0 with amplitude k**-rolloff; vibrato/glide as a frequency multiplier."""
        freq = np.full(self.n, f0 * self.pitch)
        if vib_rate:
            freq = freq * (1 + vib_depth * np.sin(2 * np.pi * vib_rate * self.tempo * self.t
                                                  + self.rng.uniform(0, 2 * np.pi)))
        if glide is not None:
            freq = freq * glide
        phase = 2 * np.pi * np.cumsum(freq) / self.sr
        out = np.zeros(self.n)
        for k in range(1, n_harm + 1):
            if odd_only and k % 2 == 0:
                continue
            if k * freq.max() >= self.sr / 2:
                break
            out += k ** -rolloff * np.sin(k * phase + self.rng.uniform(0, 2 * np.pi))
        return out

    def noise(self, lo: float, hi: float) -> np.ndarray:
        """White noise band-limited to [lo, hi] Hz by zeroing FFT bins."""
        spec = np.fft.rfft(self.rng.standard_normal(self.n))
        f = np.fft.rfftfreq(self.n, 1 / self.sr)
        spec[(f < lo) | (f > hi)] = 0
        x = np.fft.irfft(spec, self.n)
        return x / (np.abs(x).max() + 1e-9)

    # -- envelopes --
    def onsets(self, rate: float, jitter: float = 0.0) -> np.ndarray:
        """Regular strike times at `rate` per second (tempo-scaled), random start, optional jitter."""
        period = 1.0 / (rate * self.tempo)
        times = np.arange(self.rng.uniform(0, period), self.n / self.sr, period)
        if jitter:
            times = times + self.rng.normal(0, jitter * period, len(times))
        return times

    def poisson(self, rate: float) -> np.ndarray:
        count = self.rng.poisson(rate * self.n / self.sr)
        return np.sort(self.rng.uniform(0, self.n / self.sr, count))

    def strikes(self, times: np.ndarray, decay: float, attack: float = 0.002) -> np.ndarray:
        """Envelope of exponentially decaying strikes starting at `times`."""
        env = np.zeros(self.n)
        length = int(min(self.n, max(decay * 6, attack) * self.sr))
        tt = np.arange(length) / self.sr
        shape = np.minimum(tt / attack, 1.0) * np.exp(-tt / decay)
        for s in (times * self.sr).astype(int):
            if 0 <= s < self.n:
                m = min(length, self.n - s)
                env[s:s + m] = np.maximum(env[s:s + m], shape[:m])
        return env

    def gate(self, on: float, off: float) -> np.ndarray:
        """On/off square gate (beeps), random phase, 5 ms ramps against clicks."""
        period = (on + off) / self.tempo
        pos = (self.t + self.rng.uniform(0, period)) % period
        g = (pos < on / self.tempo).astype(float)
        ramp = int(0.005 * self.sr)
        return np.convolve(g, np.ones(ramp) / ramp, mode="same")

    def am(self, rate: float, depth: float) -> np.ndarray:
        return 1 - depth * 0.5 * (1 + np.sin(2 * np.pi * rate * self.tempo * self.t + self.rng.uniform(0, 2 * np.pi)))

    def steps(self, ratios: Sequence[float], dur: float) -> np.ndarray:
        """Piecewise-constant pitch multiplier: a melody of `ratios` notes of `dur` seconds."""
        idx = ((self.t + self.rng.uniform(0, dur)) / (dur / self.tempo)).astype(int)
        seq = self.rng.permutation(len(ratios))
        out = np.asarray(ratios, dtype=float)[seq[idx % len(ratios)]]
        k = int(0.01 * self.sr)  # 10 ms portamento keeps the phase continuous and click-free
        return np.convolve(np.pad(out, (k, k), mode="edge"), np.ones(k) / k, mode="same")[k:-k]

    def decaying_tone(self, f0: float, times: np.ndarray, decay: float, drop: float = 0.0) -> np.ndarray:
        """Struck pitched sound: a sine per strike, pitch falling by `drop` (fraction) over the decay."""
        out = np.zeros(self.n)
        length = int(min(self.n, decay * 6 * self.sr))
        tt = np.arange(length) / self.sr
        f = f0 * self.pitch * (1 + drop * np.exp(-tt / (decay * 0.5)))
        wave = np.sin(2 * np.pi * np.cumsum(f) / self.sr) * np.exp(-tt / decay) * np.minimum(tt / 0.002, 1)
        for s in (times * self.sr).astype(int):
            if 0 <= s < self.n:
                m = min(length, self.n - s)
                out[s:s + m] += wave[:m]
        return out


def _tri(ctx: _Ctx, period: float) -> np.ndarray:
    ph = (ctx.t / (period / ctx.tempo) + ctx.rng.uniform(0, 1)) % 1.0
    return 1 - 2 * np.abs(2 * ph - 1)


def _bouncing(c: _Ctx) -> np.ndarray:
    # A dropped ball: intervals shrink geometrically, then it is dropped again.
    times, start = [], c.rng.uniform(0, 0.2)
    while start < c.n / c.sr:
        gap = 0.45 / c.tempo
        while gap > 0.04 and start < c.n / c.sr:
            times.append(start)
            start += gap
            gap *= 0.7
        start += 0.15
    return c.decaying_tone(420, np.asarray(times), 0.03, drop=0.2)


def _tick_tock(c: _Ctx) -> np.ndarray:
    ticks = c.onsets(1.0)
    return c.decaying_tone(2000, ticks, 0.005) + c.decaying_tone(1200, ticks + 0.5 / c.tempo, 0.005)


# name -> recipe(ctx) -> waveform. Keep names exactly as AudioSet's display_name.
RECIPES: dict[str, Callable[[_Ctx], np.ndarray]] = {
    "Drum": lambda c: c.decaying_tone(110, c.onsets(3.0), 0.12, drop=0.5)
    + 0.5 * c.noise(60, 500) * c.strikes(c.onsets(3.0), 0.05),
    "Snare drum": lambda c: c.noise(1500, 6000) * c.strikes(c.onsets(4.0), 0.06)
    + 0.3 * c.decaying_tone(200, c.onsets(4.0), 0.03),
    "Bass drum": lambda c: c.decaying_tone(55, c.onsets(2.0), 0.25, drop=0.8),
    "Bagpipes": lambda c: c.harmonic(233, 14, rolloff=0.4, vib_rate=5, vib_depth=0.004)
    + 0.6 * c.harmonic(116.5, 8, rolloff=0.6),
    "Accordion": lambda c: c.harmonic(349, 8, rolloff=1.0) + c.harmonic(349 * 1.012, 8, rolloff=1.0),
    "Harmonica": lambda c: c.harmonic(523, 7, rolloff=0.8, odd_only=True) * c.am(7.0, 0.6),
    "Trumpet": lambda c: c.harmonic(466, 10, rolloff=0.7, glide=c.steps([1.0, 1.26, 1.5], 0.5)),
    "Brass instrument": lambda c: c.harmonic(311, 9, rolloff=1.0) * (0.4 + 0.6 * _tri(c, 2.0) ** 2),
    "Trombone": lambda c: c.harmonic(175, 10, rolloff=0.9,
                                     glide=1 + 0.15 * np.sin(2 * np.pi * 0.7 * c.t + c.rng.uniform(0, 6.3))),
    "Violin, fiddle": lambda c: c.harmonic(659, 10, rolloff=1.0, vib_rate=6, vib_depth=0.015),
    "Cello": lambda c: c.harmonic(131, 14, rolloff=1.0, vib_rate=5, vib_depth=0.01),
    "Bowed string instrument": lambda c: c.harmonic(330, 12, rolloff=1.0) * c.am(1.5, 0.8),
    "Basketball bounce": lambda c: c.decaying_tone(180, c.onsets(2.0), 0.08, drop=0.3)
    + 0.4 * c.noise(2000, 5000) * c.strikes(c.onsets(2.0), 0.01),
    "Bouncing": _bouncing,
    "Thump, thud": lambda c: c.noise(40, 250) * c.strikes(c.onsets(1.2, jitter=0.1), 0.15),
    "Chop": lambda c: c.noise(800, 4000) * c.strikes(c.onsets(1.5), 0.03)
    + 0.5 * c.decaying_tone(300, c.onsets(1.5), 0.04),
    "Wood": lambda c: c.decaying_tone(1000, c.onsets(4.0), 0.03),
    "Splinter": lambda c: c.noise(3000, 7500) * c.strikes(c.poisson(40), 0.004),
    "Clapping": lambda c: c.noise(1000, 3000) * c.strikes(c.onsets(5.0, jitter=0.05), 0.02),
    "Applause": lambda c: c.noise(800, 5000) * c.strikes(c.poisson(200), 0.01),
    "Cheering": lambda c: (c.noise(300, 900) + 0.7 * c.noise(1800, 3000)) * c.am(0.5, 0.6),
    "Whistling": lambda c: c.harmonic(1400, 1, glide=c.steps([1.0, 1.12, 1.26, 1.33], 0.3)),
    "Whistle": lambda c: c.harmonic(3000, 1, vib_rate=25, vib_depth=0.03),
    "Humming": lambda c: c.harmonic(180, 6, rolloff=2.0, vib_rate=4, vib_depth=0.005),
    "Rain": lambda c: c.noise(3000, 8000) * c.strikes(c.poisson(300), 0.003) + 0.15 * c.noise(2000, 8000),
    "Wind": lambda c: c.noise(100, 600) * c.am(0.3, 0.8),
    "Engine": lambda c: c.harmonic(45, 12, rolloff=0.8) * c.am(22.0, 0.7),
    "Siren": lambda c: c.harmonic(900, 2, rolloff=1.5, glide=1 + 0.38 * _tri(c, 1.2)),
    "Bird": lambda c: c.decaying_tone(4000, c.onsets(5.0, jitter=0.1), 0.02, drop=0.4),
    "Tick-tock": _tick_tock,
    "Beep, bleep": lambda c: c.harmonic(1000, 1) * c.gate(0.15, 0.15),
    "Frog": lambda c: c.harmonic(300, 5, rolloff=1.0) * c.am(40.0, 1.0) * c.gate(0.3, 0.37),
}


def synthesize(name: str, rng: np.random.Generator, seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One instance of the class `name`, float64, peak-normalized to 1."""
    try:
        recipe = RECIPES[name]
    except KeyError:
        raise KeyError(f"no synthesized sound for audio class {name!r}; known: {sorted(RECIPES)}") from None
    x = np.asarray(recipe(_Ctx(rng, seconds, sr)), dtype=np.float64)
    return x / (np.abs(x).max() + 1e-9)


def mix(names: Sequence[str], rng: np.random.Generator, seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A clip's audio: the named sounds at random levels over a faint noise floor, float32 in [-1, 1]."""
    n = int(round(seconds * sr))
    out = np.zeros(n)
    for name in names:
        out += 10 ** (rng.uniform(-6, 0) / 20) * synthesize(name, rng, seconds, sr)
    out += 10 ** (-40 / 20) * rng.standard_normal(n)
    out *= rng.uniform(0.3, 0.6) / (np.abs(out).max() + 1e-9)
    return out.astype(np.float32)
