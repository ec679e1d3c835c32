"""The frozen classifier's head as a regularised, standardised logistic regression on pooled encoder features
(Huang et al. 2022, §2.8: a frozen segmentation encoder, global average pooling, one linear layer).

With the encoder frozen, the head is a linear model on fixed features, so it can be fitted the way a statistician
fits one: standardise each feature (``StandardScaler``), then an L2-penalised logistic regression whose penalty
``C`` is chosen by cross-validation over *pseudo-patient groups* (``StratifiedGroupKFold``: every inner fold keeps
a group's slices together and holds both classes) with the ROC AUC as the score
(``LogisticRegressionCV``). That is this project's choice; the paper trains the linear layer with Adam.

The same inner folds give every training slice a probability from a model that did not see its group (out of
fold); the any-slice rule's slice threshold is chosen on those for a stated specificity
(:func:`crlearn.tasks.classifier.threshold_for_specificity`). The fitted pipeline is then folded into the torch
head (:func:`crlearn.tasks.classifier.head_from_logistic`), so the classifier stays one torch module.

The paper's x5 views (§2.3) can be used three ways (``views``): ``augment`` (each view a training row),
``mean`` (one row per slice, its views' features averaged) or ``identity`` (the slice as it is). A prediction
always reads the slice as it is (one view), as :func:`crlearn.tasks.classifier.predict_proba` does.

Everything here is NumPy and scikit-learn on features already computed
(:func:`crlearn.tasks.classifier_run.fit_logistic_classifier` computes them).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from crlearn.data.errors import DataError
from crlearn.tasks.classifier import SPECIFICITY, threshold_for_specificity

LOGISTIC_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))  # inverse penalties tried: 1e-4 ... 1e2
VIEW_USES = ("augment", "mean", "identity")  # how the x5 views enter the fit (module docstring)
INNER_FOLDS = 5  # inner group folds for C and the out-of-fold probabilities (fewer if a class has fewer groups)
MAX_ITER = 5000


def inner_splits(y: Sequence[int], groups: Sequence[str], n_splits: int = INNER_FOLDS,
                 seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group folds of slices, stratified by class (``StratifiedGroupKFold``, shuffled with ``seed``): no group in
    two parts, both classes in every held-out part. ``n_splits`` shrinks to the smallest class's group count; fewer
    than two groups of a class is a :class:`DataError`."""
    from sklearn.model_selection import StratifiedGroupKFold

    y_, g_ = np.asarray(y, dtype=int), np.asarray(groups)
    per_class = [len(set(g_[y_ == k].tolist())) for k in (0, 1)]
    n = min(n_splits, *per_class)
    if n < 2:
        raise DataError(f"the logistic head needs at least two pseudo-patient groups of each class to choose its "
                        f"penalty by group cross-validation, got {per_class[0]} non-COVID and {per_class[1]} COVID")
    cv = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in cv.split(np.zeros(len(y_)), y_, g_)]


def training_rows(views: np.ndarray, use: str) -> tuple[np.ndarray, np.ndarray]:
    """The fit's rows from features ``(N, V, C)`` (slice, view, channel): ``(X, slice index of each row)``."""
    if use not in VIEW_USES:
        raise ValueError(f"views must be one of {list(VIEW_USES)}, got {use!r}")
    n, v, c = views.shape
    if use == "augment":
        return views.reshape(n * v, c), np.repeat(np.arange(n), v)
    return (views.mean(axis=1) if use == "mean" else views[:, 0]), np.arange(n)


def _rows(slices: np.ndarray, slice_of_row: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(slice_of_row, slices))


def logistic_pipeline(cv: Any = None, Cs: Sequence[float] = LOGISTIC_CS, C: float | None = None) -> Any:
    """``make_pipeline(StandardScaler(), LogisticRegressionCV(Cs, cv, scoring="roc_auc"))``, or with ``C`` a plain
    ``LogisticRegression(C=C)`` after the scaler."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if C is not None:
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=MAX_ITER))
    # scikit-learn 1.8+ warns unless the plain L2 path and the new attribute layout are asked for by name; older
    # releases have neither argument (and use L2 by default)
    params = inspect.signature(LogisticRegressionCV).parameters
    newer = {k: v for k, v in (("l1_ratios", (0.0,)), ("use_legacy_attributes", False)) if k in params}
    return make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=list(Cs), cv=cv, scoring="roc_auc",
                                                                max_iter=MAX_ITER, **newer))


def _chosen(lr: Any, n_folds: int) -> tuple[float, float]:
    """The chosen ``C`` of a fitted ``LogisticRegressionCV`` and its mean inner score, in either attribute layout."""
    scores = lr.scores_ if not isinstance(lr.scores_, dict) else next(iter(lr.scores_.values()))
    C = float(np.asarray(lr.C_).ravel()[0])
    return C, float(np.asarray(scores).reshape(n_folds, -1)[:, list(lr.Cs_).index(C)].mean())


def out_of_fold_probs(views: np.ndarray, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]],
                      use: str, C: float) -> np.ndarray:
    """P(COVID) of every slice, each from a pipeline at penalty ``C`` fitted without the slice's group, read from
    the slice as it is (view 0), as a prediction would read it."""
    X, of = training_rows(views, use)
    probs = np.full(len(y), np.nan)
    for tr, te in splits:
        rows = _rows(tr, of)
        pipe = logistic_pipeline(C=C).fit(X[rows], y[of][rows])
        probs[te] = pipe.predict_proba(views[te, 0])[:, 1]
    return probs


def fit_logistic(views: np.ndarray, y: Sequence[int], groups: Sequence[str], use: str = "augment", seed: int = 0,
                 specificity: float = SPECIFICITY, Cs: Sequence[float] = LOGISTIC_CS) -> tuple[Any, dict[str, Any]]:
    """Fit the head on features ``views`` ``(N, V, C)`` of ``N`` labelled slices in pseudo-patient ``groups``.

    Returns ``(pipeline, info)``: the fitted ``StandardScaler`` + ``LogisticRegressionCV`` pipeline (penalty chosen
    by inner group folds on the ROC AUC, then refitted on every row) and ``info``: the chosen ``C``, its mean inner
    AUC, the out-of-fold slice AUC, and ``threshold`` (:func:`threshold_for_specificity` on the out-of-fold
    probabilities of these groups).
    """
    from sklearn.metrics import roc_auc_score

    y_ = np.asarray(y, dtype=int)
    X, of = training_rows(np.asarray(views, dtype=np.float64), use)
    splits = inner_splits(y_, groups, seed=seed)
    pipe = logistic_pipeline([(_rows(tr, of), _rows(te, of)) for tr, te in splits], Cs)
    pipe.fit(X, y_[of])
    C, inner_auc = _chosen(pipe[-1], len(splits))
    oof = out_of_fold_probs(np.asarray(views, dtype=np.float64), y_, splits, use, C)
    info = {"C": C, "Cs": list(Cs), "inner_folds": len(splits), "views": use,
            "inner_auc_at_C": inner_auc,
            "oof_slice_auc": float(roc_auc_score(y_, oof)),
            "threshold": threshold_for_specificity(y_, oof, list(groups), specificity, "the training groups")}
    return pipe, info
