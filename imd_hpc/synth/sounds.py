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


# (F1, F2) formant pairs in Hz of a few vowels (a, i, e, o, u, ae), for the voice recipes.
_VOWELS = ((730, 1090), (270, 2290), (530, 1840), (570, 840), (300, 870), (660, 1720))


def _voiced(c: _Ctx, f0: float, f1: np.ndarray, f2: np.ndarray, intonation: float = 0.1) -> np.ndarray:
    """A voice: glottal harmonics of f0 (with a slow intonation contour) shaped by two formants
    f1(t), f2(t), the source-filter picture of a vowel; harmonics up to 4 kHz."""
    freq = f0 * c.pitch * (1 + intonation * np.sin(2 * np.pi * c.rng.uniform(0.3, 0.7) * c.t
                                                    + c.rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(freq) / c.sr
    out = np.zeros(c.n)
    for k in range(1, int(4000 // freq.max()) + 1):
        fk = k * freq
        gain = np.exp(-(((fk - f1) / 120) ** 2)) + 0.6 * np.exp(-(((fk - f2) / 180) ** 2)) + 0.03
        out += gain / k * np.sin(k * phase + c.rng.uniform(0, 2 * np.pi))
    return out


def _syllables(c: _Ctx, rate: float, silent: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample formants (f1, f2) of random vowels, one per syllable, and a syllabic envelope
    with `silent` of the syllables left out (the pauses of speech)."""
    dur = 1.0 / (rate * c.tempo)
    pos = (c.t + c.rng.uniform(0, dur)) / dur
    idx = pos.astype(int)
    n_syl = int(idx.max()) + 1
    vowels = np.asarray(_VOWELS, dtype=float)[c.rng.integers(0, len(_VOWELS), n_syl)]
    voiced = c.rng.uniform(size=n_syl) >= silent
    env = np.sin(np.pi * (pos % 1.0)) ** 2 * voiced[idx]
    return vowels[idx, 0], vowels[idx, 1], env


def _speech(c: _Ctx, f0: float | None = None) -> np.ndarray:
    f1, f2, env = _syllables(c, rate=4.5, silent=0.25)
    return _voiced(c, f0 or c.rng.uniform(100, 220), f1, f2) * env


def _crowd(c: _Ctx) -> np.ndarray:
    # Many voices at once (babble) over a murmur: no single voice stands out.
    voices = sum(c.rng.uniform(0.5, 1.0) * _speech(c, c.rng.uniform(90, 260)) for _ in range(5))
    return voices / 3 + 0.5 * c.noise(200, 2500)


def _laughter(c: _Ctx) -> np.ndarray:
    # Bursts of 3-6 breathy "ha" syllables at about 5 per second, pitch falling over each burst.
    out, start = np.zeros(c.n), c.rng.uniform(0, 0.3)
    breath = c.noise(500, 4000)
    while start < c.n / c.sr:
        count = int(c.rng.integers(3, 7))
        for j in range(count):
            s = start + j * 0.2 / c.tempo
            seg = (c.t >= s) & (c.t < s + 0.14 / c.tempo)
            env = np.where(seg, np.sin(np.pi * np.clip((c.t - s) / (0.14 / c.tempo), 0, 1)), 0.0)
            out += env * (1 - 0.05 * j)
        start += count * 0.2 / c.tempo + c.rng.uniform(0.3, 0.6)
    voice = _voiced(c, c.rng.uniform(240, 320), np.full(c.n, 730.0), np.full(c.n, 1090.0), intonation=0.05)
    return out * (voice + 0.6 * breath)


def _sneeze(c: _Ctx) -> np.ndarray:
    # "ah-" (a rising voiced inhale) then "-choo" (a sharp broadband burst); once or twice.
    out = np.zeros(c.n)
    inhale_voice = _voiced(c, 300, np.full(c.n, 660.0), np.full(c.n, 1720.0), intonation=0.0)
    burst = c.noise(300, 7000)
    for s in np.sort(c.rng.uniform(0.4, c.n / c.sr - 0.4, int(c.rng.integers(1, 3)))):
        rise = np.clip((c.t - (s - 0.35)) / 0.35, 0, 1) * (c.t < s)
        out += 0.3 * rise ** 2 * inhale_voice
        out += burst * c.strikes(np.array([s]), 0.12, attack=0.005)
    return out


def _marimba(c: _Ctx) -> np.ndarray:
    # Struck bars: a short melody of pentatonic notes, each with the bar's tuned 4th partial.
    out = np.zeros(c.n)
    scale = np.array([1.0, 9 / 8, 5 / 4, 3 / 2, 5 / 3, 2.0])
    for s in c.onsets(6.0, jitter=0.05):
        f = 523.0 * scale[c.rng.integers(0, len(scale))]
        one = np.array([s])
        out += c.decaying_tone(f, one, 0.15) + 0.3 * c.decaying_tone(4 * f, one, 0.04)
    return out


def _background_music(c: _Ctx) -> np.ndarray:
    # Soft electric-piano chords (I-IV-V-vi in random order), one every 0.5 s, over a bass note.
    chords = ((1.0, 1.26, 1.5), (1.33, 1.68, 2.0), (1.5, 1.89, 2.25), (1.68, 2.0, 2.52))
    dur = 0.5 / c.tempo
    out = np.zeros(c.n)
    for s in np.arange(c.rng.uniform(-dur, 0), c.n / c.sr, dur):
        chord = chords[c.rng.integers(0, len(chords))]
        inside = (c.t >= s) & (c.t < s + dur)
        since = np.where(inside, c.t - s, 0.0)
        env = inside * np.exp(-since / 0.4) * np.minimum(since / 0.01, 1)
        for ratio in (*chord, chord[0] / 2):
            f = 262.0 * ratio * c.pitch
            out += env * (np.sin(2 * np.pi * f * c.t) + 0.25 * np.sin(4 * np.pi * f * c.t))
    return out


def _pink_noise(c: _Ctx) -> np.ndarray:
    spec = np.fft.rfft(c.rng.standard_normal(c.n))
    f = np.fft.rfftfreq(c.n, 1 / c.sr)
    spec *= np.where(f > 20, 1 / np.sqrt(np.maximum(f, 1.0)), 0.0)
    return np.fft.irfft(spec, c.n)


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
    "Engine": lambda c: c.harmonic(45, 12, rolloff=0.8) * c.am(22.0, 0.7),
    "Bird": lambda c: c.decaying_tone(4000, c.onsets(5.0, jitter=0.1), 0.02, drop=0.4),
    "Frog": lambda c: c.harmonic(300, 5, rolloff=1.0) * c.am(40.0, 1.0) * c.gate(0.3, 0.37),
    "Marimba, xylophone": _marimba,
    "Sneeze": _sneeze,
    "Laughter": _laughter,
    "Lawn mower": lambda c: c.harmonic(105, 30, rolloff=0.5) * c.am(35.0, 0.3) + 0.3 * c.noise(1000, 4000),
    "Motorcycle": lambda c: c.harmonic(70, 25, rolloff=0.6, glide=1 + 0.5 * _tri(c, 1.6) ** 2) * c.am(30.0, 0.5),
    # Background: heard under any activity (edited videos, street, studio), so no class's own sound.
    "Background music": _background_music,
    "Speech": _speech,
    "Crowd": _crowd,
    "Pink noise": _pink_noise,
}


def active_level(x: np.ndarray, sr: int = SAMPLE_RATE, frame_s: float = 0.02, floor_db: float = -30.0) -> float:
    """RMS over the 20 ms frames within 30 dB of the loudest: how loud a sound is while it sounds
    (the idea of ITU-T P.56's active speech level), so sparse strikes and steady noise compare fairly."""
    n = max(1, int(frame_s * sr))
    frames = x[: len(x) // n * n].reshape(-1, n)
    energy = (frames ** 2).mean(1)
    active = energy[energy >= energy.max() * 10 ** (floor_db / 10)]
    return float(np.sqrt(active.mean())) if len(active) else 0.0


def synthesize(name: str, rng: np.random.Generator, seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One instance of the class `name`, float64, at unit active level (see active_level)."""
    try:
        recipe = RECIPES[name]
    except KeyError:
        raise KeyError(f"no synthesized sound for audio class {name!r}; known: {sorted(RECIPES)}") from None
    x = np.asarray(recipe(_Ctx(rng, seconds, sr)), dtype=np.float64)
    return x / (active_level(x, sr) + 1e-9)


def mix(names: Sequence[str], rng: np.random.Generator, seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A clip's audio: the named sounds at random levels over a faint noise floor, float32 in [-1, 1]."""
    n = int(round(seconds * sr))
    out = np.zeros(n)
    for name in names:
        out += 10 ** (rng.uniform(-6, 0) / 20) * synthesize(name, rng, seconds, sr)
    out += 10 ** (-40 / 20) * rng.standard_normal(n)
    out *= rng.uniform(0.3, 0.6) / (np.abs(out).max() + 1e-9)
    return out.astype(np.float32)
