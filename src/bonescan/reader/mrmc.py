"""Multi-reader multi-case (MRMC) comparison of two readings by reader-averaged AUC.

Obuchowski–Rockette (OR) model with random readers and random cases, in the form of Hillis (2007, 2008): the test
statistic F = MS(T) / (MS(TR) + J·max(Cov2 − Cov3, 0)) with the DBM-equivalent denominator degrees of freedom
ddf_H = (MS(TR) + J·max(Cov2 − Cov3, 0))² / (MS(TR)² / ((I − 1)(J − 1))), and the confidence interval of the
difference of reader-averaged AUCs built on the same denominator and ddf_H.

The error variance and the covariances Cov1 (same reader, other modality), Cov2 (same modality, other reader) and
Cov3 (other reader and modality) come from the (I·J) x (I·J) covariance matrix of the empirical AUCs, estimated by
the case jackknife (default, as in RJafroc and MRMCaov) or by DeLong's method.

In a bone-scan reader study the two modalities are the readers' own reading ("human": the blinded phase, or the
readers' own answers before the AI was shown when there is no blinded phase) and the AI-consulted final reading.
Each answer becomes a rating on a 10-level scale: +confidence for "metastasis" and −confidence for
"no metastasis" (confidence 1–5), so −5 is "surely no metastasis" and +5 "surely metastasis".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sstats

from ..errors import ConfigError
from ..evaluate.stats import delong_components

COVARIANCE_METHODS = ("jackknife", "delong")
MODALITY_TITLES = {"human": "Human diagnosis", "ai-consulted": "AI consulted diagnosis"}


@dataclass(frozen=True)
class MrmcResult:
    """Obuchowski–Rockette / Hillis analysis of two modalities read by the same readers on the same cases."""

    modalities: tuple[str, str]
    readers: tuple[str, ...]
    n_positive: int
    n_negative: int
    covariance_method: str
    reader_aucs: np.ndarray  # (2, J): empirical AUC of each reader in each modality
    mean_aucs: tuple[float, float]  # reader-averaged AUC per modality
    difference: float  # mean_aucs[0] - mean_aucs[1]
    error_variance: float
    cov1: float
    cov2: float
    cov3: float
    ms_treatment: float
    ms_treatment_reader: float
    f_statistic: float
    df1: int
    ddf: float
    p_value: float
    std_error: float
    ci_low: float
    ci_high: float
    confidence: float

    def summary_frame(self) -> pd.DataFrame:
        """One row per quantity (name, value), for CSV output."""
        rows = [("modality_1", self.modalities[0]), ("modality_2", self.modalities[1]),
                ("readers", len(self.readers)), ("cases_metastasis", self.n_positive),
                ("cases_no_metastasis", self.n_negative), ("covariance_method", self.covariance_method),
                (f"auc_{self.modalities[0]}", self.mean_aucs[0]), (f"auc_{self.modalities[1]}", self.mean_aucs[1]),
                ("difference", self.difference), ("std_error", self.std_error),
                (f"ci{round(100 * self.confidence)}_low", self.ci_low),
                (f"ci{round(100 * self.confidence)}_high", self.ci_high),
                ("f_statistic", self.f_statistic), ("df1", self.df1), ("ddf", self.ddf), ("p_value", self.p_value),
                ("ms_t", self.ms_treatment), ("ms_tr", self.ms_treatment_reader), ("var_error", self.error_variance),
                ("cov1", self.cov1), ("cov2", self.cov2), ("cov3", self.cov3)]
        return pd.DataFrame(rows, columns=["quantity", "value"])

    def reader_frame(self) -> pd.DataFrame:
        """Per-reader AUC in each modality and their difference."""
        table = pd.DataFrame({"reader": list(self.readers),
                              f"auc_{self.modalities[0]}": self.reader_aucs[0],
                              f"auc_{self.modalities[1]}": self.reader_aucs[1]})
        table["difference"] = self.reader_aucs[0] - self.reader_aucs[1]
        return table


def answer_rating(answer: int, confidence: int) -> int:
    """10-level rating of one answer: +confidence for metastasis, −confidence for no metastasis."""
    return int(confidence) if int(answer) == 1 else -int(confidence)


# ------------------------------------------------------------------------------------------------ covariances
def _jackknife_covariance(labels: np.ndarray, score_sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and case-jackknife covariance of the AUCs of each score set (rows)."""
    parts = delong_components(labels, score_sets)
    m = parts.positive_placements.shape[1]
    n = parts.negative_placements.shape[1]
    if m < 2 or n < 2:
        raise ConfigError("ratings", "the jackknife needs at least two cases with and two without metastasis")
    total = parts.aucs[:, None] * (m * n)  # sum over all positive-negative pairs of the kernel
    # Leaving out one positive removes its n pairs; leaving out one negative removes its m pairs.
    without_positive = (total - n * parts.positive_placements) / ((m - 1) * n)
    without_negative = (total - m * parts.negative_placements) / (m * (n - 1))
    jackknife = np.concatenate([without_positive, without_negative], axis=1)  # (k, K)
    cases = jackknife.shape[1]
    covariance = np.atleast_2d(np.cov(jackknife, ddof=1)) * (cases - 1) ** 2 / cases
    return parts.aucs, covariance


def _auc_covariance(labels: np.ndarray, score_sets: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    if method == "jackknife":
        return _jackknife_covariance(labels, score_sets)
    parts = delong_components(labels, score_sets)
    return parts.aucs, parts.covariance


def _or_covariances(covariance: np.ndarray, modalities: int, readers: int) -> tuple[float, float, float, float]:
    """Average the AUC covariance matrix (modality-major order) into Var, Cov1, Cov2 and Cov3."""
    modality = np.repeat(np.arange(modalities), readers)
    reader = np.tile(np.arange(readers), modalities)
    same_modality = modality[:, None] == modality[None, :]
    same_reader = reader[:, None] == reader[None, :]

    def mean(mask: np.ndarray) -> float:
        return float(covariance[mask].mean()) if mask.any() else math.nan

    return (mean(same_modality & same_reader), mean(~same_modality & same_reader),
            mean(same_modality & ~same_reader), mean(~same_modality & ~same_reader))


# ------------------------------------------------------------------------------------------------ analysis
def obuchowski_rockette(
    labels: np.ndarray,
    ratings: np.ndarray,
    *,
    modalities: tuple[str, str] = ("1", "2"),
    readers: tuple[str, ...] | None = None,
    method: str = "jackknife",
    confidence: float = 0.95,
) -> MrmcResult:
    """OR/Hillis random-reader random-case test of two modalities; `ratings` is (2 modalities, J readers, K cases)."""
    if method not in COVARIANCE_METHODS:
        raise ConfigError("method", f"{method!r} is not one of {', '.join(COVARIANCE_METHODS)}")
    labels = np.asarray(labels, dtype=int)
    ratings = np.asarray(ratings, dtype=float)
    if ratings.ndim != 3 or ratings.shape[0] != 2:
        raise ConfigError("ratings", f"expected shape (2 modalities, readers, cases), got {ratings.shape}")
    n_modalities, n_readers, n_cases = ratings.shape
    if labels.shape != (n_cases,) or not np.isin(labels, (0, 1)).all():
        raise ConfigError("labels", f"expected {n_cases} labels of 0 or 1")
    if n_readers < 2:
        raise ConfigError("ratings", "random-reader analysis needs at least two readers")
    if not np.isfinite(ratings).all():
        raise ConfigError("ratings", "every reader must rate every case in both modalities")
    n_positive, n_negative = int(labels.sum()), int((labels == 0).sum())
    if n_positive == 0 or n_negative == 0:
        raise ConfigError("labels", "needs cases with and without metastasis")
    readers = tuple(str(r) for r in (readers if readers is not None else range(n_readers)))

    aucs, covariance = _auc_covariance(labels, ratings.reshape(n_modalities * n_readers, n_cases), method)
    aucs = aucs.reshape(n_modalities, n_readers)
    var_error, cov1, cov2, cov3 = _or_covariances(covariance, n_modalities, n_readers)

    modality_means = aucs.mean(axis=1)
    reader_means = aucs.mean(axis=0)
    grand_mean = aucs.mean()
    ms_t = n_readers * float(np.sum((modality_means - grand_mean) ** 2)) / (n_modalities - 1)
    interaction = aucs - modality_means[:, None] - reader_means[None, :] + grand_mean
    df_tr = (n_modalities - 1) * (n_readers - 1)
    ms_tr = float(np.sum(interaction ** 2)) / df_tr

    denominator = ms_tr + n_readers * max(cov2 - cov3, 0.0)
    difference = float(modality_means[0] - modality_means[1])
    if not denominator > 0:
        raise ConfigError("ratings", "the reader AUCs and their covariances show no variability; no test possible")
    f_statistic = ms_t / denominator
    # Hillis (2008) ddf; with MS(TR) = 0 it is infinite and the t distribution becomes the normal one.
    ddf = denominator ** 2 / (ms_tr ** 2 / df_tr) if ms_tr > 0 else math.inf
    std_error = math.sqrt(2.0 * denominator / n_readers)
    p_value = float(2.0 * sstats.t.sf(abs(difference) / std_error, ddf))  # = P(F(1, ddf) > f) for 2 modalities
    half_width = float(sstats.t.ppf(0.5 + confidence / 2.0, ddf)) * std_error
    return MrmcResult(
        modalities=tuple(modalities), readers=readers, n_positive=n_positive, n_negative=n_negative,
        covariance_method=method, reader_aucs=aucs, mean_aucs=(float(modality_means[0]), float(modality_means[1])),
        difference=difference, error_variance=var_error, cov1=cov1, cov2=cov2, cov3=cov3, ms_treatment=ms_t,
        ms_treatment_reader=ms_tr, f_statistic=f_statistic, df1=n_modalities - 1, ddf=ddf, p_value=p_value,
        std_error=std_error, ci_low=difference - half_width, ci_high=difference + half_width, confidence=confidence,
    )


# ------------------------------------------------------------------------------------------------ reader studies
def _modality_ratings(reads: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per modality, the rows (reader, case_id, answer, confidence) of the answers that enter the analysis."""
    phases = set(reads["phase"])
    human_phase = "blinded" if "blinded" in phases else "ai-consulted"
    human = reads[(reads["phase"] == human_phase) & reads["own_answer"].notna()]
    consulted = reads[(reads["phase"] == "ai-consulted") & reads["final_answer"].notna()]
    columns = ["reader", "case_id", "answer", "confidence"]
    return {
        "human": human.rename(columns={"own_answer": "answer", "own_confidence": "confidence"})[columns],
        "ai-consulted": consulted.rename(columns={"final_answer": "answer", "final_confidence": "confidence"})[columns],
    }


def study_mrmc(reads: pd.DataFrame, truth: pd.Series, *, method: str = "jackknife",
               confidence: float = 0.95) -> MrmcResult | str:
    """OR/Hillis analysis of human vs AI-consulted reading of a reader study, or the reason it cannot be computed.

    Uses the readers who answered in both readings and the cases with a reference label that every one of them
    answered in both; every one of those answers must carry a confidence score.
    """
    if reads.empty:
        return "no answers recorded"
    parts = _modality_ratings(reads)
    if parts["ai-consulted"].empty:
        return "no AI-consulted final answers yet"
    readers = sorted(set(parts["human"]["reader"]) & set(parts["ai-consulted"]["reader"]))
    if len(readers) < 2:
        return f"needs at least two readers with both readings, found {len(readers)}"
    cases = set(truth.index)
    for frame in parts.values():
        for reader in readers:
            cases &= set(frame.loc[frame["reader"] == reader, "case_id"])
    cases = sorted(cases)
    if not cases:
        return "no labelled case was read by every reader in both readings"
    grids = {}
    for name, frame in parts.items():
        chosen = frame[frame["reader"].isin(readers) & frame["case_id"].isin(cases)]
        missing = int(chosen["confidence"].isna().sum())
        if missing:
            return (f"{missing} of {len(chosen)} {MODALITY_TITLES[name]} answers have no confidence score; "
                    "the analysis needs a confidence (1-5) with every answer")
        chosen = chosen.assign(rating=[answer_rating(a, c) for a, c in zip(chosen["answer"], chosen["confidence"])])
        grids[name] = chosen.pivot(index="reader", columns="case_id", values="rating").loc[readers, cases]
    labels = truth[cases].to_numpy(dtype=int)
    if labels.min() == labels.max():
        return "the cases read in both readings all have the same reference label"
    if method == "jackknife" and min(int(labels.sum()), int((labels == 0).sum())) < 2:
        return "needs at least two cases with and two without metastasis"
    ratings = np.stack([grids["human"].to_numpy(float), grids["ai-consulted"].to_numpy(float)])
    try:
        return obuchowski_rockette(labels, ratings, modalities=("human", "ai-consulted"), readers=tuple(readers),
                                   method=method, confidence=confidence)
    except ConfigError as error:
        return error.reason
