"""Label statistics: extra label bits H(S|C) and the per-split × class × subclass summary."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeskd.data.base import SPLITS, LabeledSet
from edgeskd.data.records import positive_class_index

LABEL_BITS_FORMULA = "H(S) - H(C) = H(S|C) over the training labels, in bits (S subclass, C class)"


def entropy_bits(values: np.ndarray) -> float:
    """Shannon entropy (bits) of the empirical distribution of ``values``."""
    _, counts = np.unique(np.asarray(values), return_counts=True)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def label_bits(ls_or_arrays: LabeledSet | tuple[np.ndarray, np.ndarray]) -> float:
    """H(S) − H(C) in bits on the training split (a LabeledSet), or on (subclasses, labels).

    Because every subclass belongs to one class, H(S) = H(S, C) = H(C) + H(S|C), so this is the
    conditional entropy H(S|C): how many bits a subclass label adds to the class label.
    """
    if isinstance(ls_or_arrays, LabeledSet):
        tr = ls_or_arrays.splits == "train"
        subs, labels = ls_or_arrays.subclasses[tr], ls_or_arrays.labels[tr]
    else:
        subs, labels = (np.asarray(a) for a in ls_or_arrays)
    if len(subs) == 0:
        return 0.0
    return max(0.0, entropy_bits(subs) - entropy_bits(labels))


def dataset_summary(ls: LabeledSet) -> dict[str, Any]:
    """Everything ``edgeskd info`` shows, JSON-ready."""
    splits = [s for s in SPLITS if np.any(ls.splits == s)]
    counts = {
        sp: {
            ls.class_names[c]: {
                ls.subclass_names[s]: int(np.sum((ls.splits == sp) & (ls.subclasses == s)))
                for s in range(ls.num_subclasses) if ls.subclass_to_class[s] == c
            }
            for c in range(ls.num_classes)
        }
        for sp in splits
    }
    out: dict[str, Any] = {
        "name": ls.name,
        "format": ls.format,
        "root": str(ls.root) if ls.root is not None else None,
        "num_images": len(ls),
        "class_names": list(ls.class_names),
        "subclass_names": list(ls.subclass_names),
        "subclass_to_class": [int(v) for v in ls.subclass_to_class],
        "positive_class": ls.class_names[positive_class_index(list(ls.class_names), ls.background_class,
                                                              ls.info.get("positive_class"))],
        "background_class": None if ls.background_class is None else ls.class_names[ls.background_class],
        "subclass_definition": ls.info.get("subclass_definition", "as given (folder / manifest names)"),
        "split_source": ls.info.get("split_source", "given"),
        "split_sizes": {sp: int(np.sum(ls.splits == sp)) for sp in splits},
        "class_counts": {sp: {ls.class_names[c]: int(np.sum((ls.splits == sp) & (ls.labels == c)))
                              for c in range(ls.num_classes)} for sp in splits},
        "counts": counts,
        "label_bits": round(label_bits(ls), 6),
        "label_bits_formula": LABEL_BITS_FORMULA,
    }
    warnings = list(ls.info.get("warnings", []))
    if ls.votes is not None and np.any(ls.votes >= 0):
        v = ls.votes[ls.votes >= 0]
        n = ls.n_annotators
        out["votes"] = {
            "n_annotators": n,
            "histogram": {str(k): int(c) for k, c in enumerate(np.bincount(v, minlength=n + 1)[: n + 1])},
            "non_unanimous_share": round(float(np.mean((v > 0) & (v < n))), 6),
            "unknown": int(np.sum(ls.votes < 0)),
        }
        known = ls.votes >= 0
        pos = list(ls.class_names).index(out["positive_class"])
        agree = (ls.votes[known] * 2 > n) == (ls.labels[known] == pos)   # votes count the positive class
        if ls.num_classes - (ls.background_class is not None) == 2:
            out["votes"]["disagree_with_label"] = int(np.sum(~agree))
            if agree.size >= 10 and np.mean(~agree) > 0.5:
                warnings.append(
                    f"votes disagree with the label on {np.mean(~agree):.0%} of images: votes count annotators "
                    f"for the positive class, here {out['positive_class']!r}; if that is the wrong class, set "
                    "\"positive_class\" in ROOT/dataset.json")
    if "vote_disagreements" in ls.info:
        out["vote_disagreements"] = ls.info["vote_disagreements"]
    if "true_labels" in ls.info and ls.polyp_mask.any():
        pm = ls.polyp_mask
        out["label_noise_rate"] = round(float(np.mean(np.asarray(ls.info["true_labels"])[pm] != ls.labels[pm])), 6)
        out["label_noise_source"] = "majority vote vs the true latent class, polyp frames (known for synthetic data)"
    elif "label_noise_rate" in ls.info:
        out["label_noise_rate"] = round(float(ls.info["label_noise_rate"]), 6)
        out["label_noise_source"] = "recorded by the synthetic generator (dataset.json)"
    if "generator" in ls.info:
        out["generator"] = ls.info["generator"]
    if ls.groups is not None:
        from edgeskd.data.splits import straddling_groups

        leaks = straddling_groups(ls.groups, ls.splits)
        out["groups"] = {"n_groups": int(len(np.unique(ls.groups.astype(str)))),
                         "per_split": {sp: int(len(np.unique(ls.groups[ls.splits == sp].astype(str))))
                                       for sp in splits},
                         "in_several_splits": leaks}
        if leaks and not any("more than one split" in w for w in warnings):
            g, where = next(iter(leaks.items()))
            warnings.append(f"{len(leaks)} group(s) in more than one split (e.g. {g!r} in {'/'.join(where)})")
    if "skipped_bad" in ls.info:
        out["skipped_bad"] = list(ls.info["skipped_bad"])
    out["warnings"] = warnings
    return out
