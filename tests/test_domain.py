"""The cross-run feature-reuse analyses (issue 15, part B): FID, prediction similarity,
representation vs gain, the pairs stage's `state` and the CCA subsample protocol.

Numbers are checked against closed forms (Fréchet distance of Gaussians), numpy (np.cov),
scikit-learn (accuracy, Cohen's kappa), plain numpy correlations and hand-computed gains."""

from __future__ import annotations

import copy
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from scipy import stats
from sklearn.metrics import accuracy_score, cohen_kappa_score

from medtransfer import paths
from medtransfer.analysis.cca_subsample import subsampled
from medtransfer.analysis.fid import StreamingMoments, frechet_distance, trace_sqrt_product
from medtransfer.analysis.fid_gain import fid_gain
from medtransfer.analysis.gain import gain_over_ri
from medtransfer.analysis.predictions import compare_runs, prediction_similarity
from medtransfer.analysis.representation_gain import correlations, run_points
from medtransfer.errors import ConfigError, DataError, WeightsError
from medtransfer.study import Study, validate_config

from conftest import SCHEMA, tiny_config


def random_covariance(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


# ------------------------------------------------------------------------------ Fréchet distance


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))  # = Σ (√s1 − √s2)² + ‖Δμ‖²
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_commuting_covariances_is_the_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))  # shared eigenvectors: Σ1 Σ2 = Σ2 Σ1
    a, b = rng.uniform(0.01, 4, 8), rng.uniform(0.01, 4, 8)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = rng.normal(size=8)
    expected = np.sum(mu**2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu, s1, np.zeros(8), s2) == pytest.approx(expected, rel=1e-10)


def test_trace_term_agrees_with_scipy_sqrtm_on_well_conditioned_covariances():
    rng = np.random.default_rng(2)
    s1, s2 = random_covariance(rng, 10) + np.eye(10), random_covariance(rng, 10) + np.eye(10)
    expected = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_zero_for_equal_gaussians_and_symmetric():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 50))  # n < d: a singular covariance
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9 * np.trace(sigma))
    s2, mu2 = random_covariance(rng, 50), rng.normal(size=50)
    assert frechet_distance(mu, sigma, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu, sigma), rel=1e-9)


def test_frechet_distance_of_singular_covariances_is_finite_and_non_negative():
    rng = np.random.default_rng(4)
    for n, d in ((5, 64), (20, 200), (2, 16)):
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.1
        value = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
        assert np.isfinite(value) and value >= 0
    # rank-deficient and sharing no direction: tr √(Σ1 Σ2) = 0, so FD = tr Σ1 + tr Σ2
    s1, s2 = np.diag([1.0, 2.0, 0.0, 0.0]), np.diag([0.0, 0.0, 3.0, 4.0])
    assert frechet_distance(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(10.0)


def test_chunked_statistics_equal_numpy_cov_even_far_from_the_origin():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1003, 7)) * rng.uniform(0.5, 2, 7) + 1e4  # a large mean cancels in the raw sums
    moments = StreamingMoments()
    for start in range(0, len(x), 64):
        moments.update(x[start:start + 64].astype(np.float64))
    assert moments.n == len(x)
    np.testing.assert_allclose(moments.mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(moments.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------ FID jobs


def fid_config(**fid) -> dict:
    config = tiny_config()
    config["study"]["inits"] = ["RI", {"WT": "natural"}, {"ST": "natural"}]
    config["analysis"]["fid"] = fid
    return config


def test_fid_specs_pair_each_source_dataset_with_each_target():
    study = Study(fid_config(features="natural", max_images=50))
    assert study.fid_pairs() == [{"source": "natural", "source_dataset": "shapes", "target": "lesions"}]
    assert study.fid_stats_jobs() == [paths.fid_stats("natural@cbr_tiny", d) for d in ("lesions", "shapes")]
    spec = study.fid_stats_spec("natural@cbr_tiny", "lesions")
    assert spec["embedder"]["source"] == {"kind": "pretrain", "path": paths.pretrain_model("natural", "cbr_tiny")}
    # the source's pretraining normalisation (its dataset's statistics) for both datasets
    assert spec["embedder"]["normalize"] == "dataset"
    assert spec["embedder"]["normalize_cache"] == paths.dataset_cache("shapes")
    assert {"fid_gain", "fid_st_share"} <= set(study.figure_names())
    off = Study(fid_config() | {"analysis": {**tiny_config()["analysis"], "fid": False}})
    assert off.fid_pairs() == [] and "fid_gain" not in off.figure_names()
    with pytest.raises(ConfigError, match="analysis.fid is false"):
        off.domain_distance_spec()


@pytest.mark.parametrize("fid, key", [
    ({"features": "inceptoin_v3"}, "analysis.fid.features: 'inceptoin_v3' is neither a source"),
    ({"source_datasets": {"imagenet": "shapes"}}, "analysis.fid.source_datasets.imagenet"),
    ({"source_datasets": {"natural": "nope"}}, "analysis.fid.source_datasets.natural"),
    ({"features": "natural", "arch": "resnet18"}, "analysis.fid.arch"),
])
def test_bad_fid_options_name_the_key(fid, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Study(fid_config(**fid)).check_architectures()


def test_schema_rejects_bad_analysis_values_naming_the_key():
    for analysis, key in (({"fid": {"split": "all"}}, "analysis.fid"),
                          ({"prediction_similarity": {"split": "train"}}, "analysis.prediction_similarity"),
                          ({"representation_gain": {"metric": "auc"}}, "analysis.representation_gain"),
                          ({"cca_subsample": {"channels": 64}}, "analysis.cca_subsample")):
        config = tiny_config()
        config["analysis"].update(analysis)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate_config(config, SCHEMA)
    config = tiny_config()
    config["analysis"].update(fid=False, prediction_similarity=False, representation_gain=False, cca_subsample=None)
    validate_config(config, SCHEMA)
    assert Study(config).domain_tables() == []


@pytest.fixture
def not_cached(monkeypatch):
    """The hub weights are not in the cache (whatever this machine's cache holds)."""
    import huggingface_hub

    def miss(*args, **kwargs):
        raise FileNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", miss)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_the_timm_default_offline_fails_naming_the_key_and_the_offline_way(not_cached):
    from medtransfer.analysis.fid import embedder

    study = Study(fid_config())  # default: timm inception_v3
    warning = study.fid_weights_warning()  # at plan time
    assert "analysis.fid.features" in warning and "natural" in warning and "analysis.fid: false" in warning
    with pytest.raises(WeightsError, match=r"analysis\.fid\.features: 'inception_v3'.*study's sources"):
        embedder(study.fid_stats_spec("inception_v3", "lesions")["embedder"])  # at job time
    assert Study(fid_config(features="natural")).fid_weights_warning() is None


@pytest.fixture
def lesions_and_embedder(tmp_path, monkeypatch):
    """A tiny lesions cache and a CBR-Tiny source checkpoint on disk (kind "file")."""
    import torch

    from medtransfer import models
    from medtransfer.data import build_cache

    monkeypatch.chdir(tmp_path)
    config = tiny_config()
    build_cache("lesions", config["datasets"]["lesions"], paths.dataset_cache("lesions"))
    torch.manual_seed(0)
    model = models.create("cbr_tiny", 2, width=0.125)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "source.pt")
    spec = {"kind": "source", "label": "mine@cbr_tiny", "arch": "cbr_tiny", "arch_options": {"width": 0.125},
            "init": {"name": "WT", "source": "mine", "k": None, "slim": None, "label": "WT_mine"},
            "source": {"kind": "file", "path": str(tmp_path / "source.pt")},
            "normalize": {"mean": [0.4], "std": [0.2]}, "normalize_cache": None, "image_size": None}
    return model, spec


def test_fid_statistics_stream_to_what_numpy_gives_on_all_features_at_once(lesions_and_embedder):
    import torch

    from medtransfer.analysis.fid import dataset_statistics, read_statistics
    from medtransfer.data import read_split

    model, embedder_spec = lesions_and_embedder
    out = "results/fid_stats/mine@cbr_tiny/lesions.h5"
    spec = {"dataset": "lesions", "cache": paths.dataset_cache("lesions"), "split": "train", "max_images": 150,
            "seed": 0, "size": 20, "batch_size": 32, "embedder": embedder_spec, "out": out}
    dataset_statistics(spec, torch.device("cpu"))
    stats_file = read_statistics(out)
    # independently: the 150 images of the seeded subset, normalised, resized and embedded in one batch
    indices = np.sort(np.random.default_rng(0).permutation(200)[:150])
    images = torch.from_numpy(np.asarray(read_split(paths.dataset_cache("lesions"), "train")[0])[indices]).float() / 255
    x = (images.repeat(1, 3, 1, 1) - 0.4) / 0.2
    x = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    model.eval()
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x), pre_logits=True).double().numpy()
    assert stats_file["n"] == 150 and stats_file["size"] == 20
    np.testing.assert_allclose(stats_file["mean"], features.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats_file["covariance"], np.cov(features, rowvar=False), rtol=1e-3, atol=1e-7)


def test_domain_distance_refuses_statistics_of_different_embedders(tmp_path):
    from medtransfer.analysis.fid import STATS_VERSION, domain_distance

    for name, size in (("a", 32), ("b", 64)):
        with h5py.File(tmp_path / f"{name}.h5", "w") as handle:
            handle["mean"], handle["covariance"] = np.zeros(3), np.eye(3)
            handle.attrs.update(n=10, dataset=name, split="train", features="x", size=size, version=STATS_VERSION)
    pair = {"source": "s", "source_dataset": "a", "target": "b", "source_stats": str(tmp_path / "a.h5"),
            "target_stats": str(tmp_path / "b.h5")}
    with pytest.raises(DataError, match="embedded differently"):
        domain_distance({"pairs": [pair]})
    frame = domain_distance({"pairs": [{**pair, "target_stats": pair["source_stats"]}]})
    assert frame["fid"].tolist() == [0.0] and frame["n_source"].tolist() == [10]


# ------------------------------------------------------------------------------ gains


def metrics_frame(values: dict[str, list[float]], dataset="lesions", fraction=1.0) -> pd.DataFrame:
    rows = []
    for init, aucs in values.items():
        name, _, source = init.partition("_")
        for seed, auc in enumerate(aucs):
            rows.append({"dataset": dataset, "arch": "cbr_tiny", "init": init, "init_name": name,
                         "source": source or np.nan, "k": np.nan, "fraction": fraction, "seed": seed, "test_auc": auc})
    return pd.DataFrame(rows)


def test_fid_gain_and_the_share_statistics_do_not_explain():
    metrics = metrics_frame({"RI": [0.60, 0.62], "WT_nat": [0.80, 0.70], "ST_nat": [0.66, 0.64]})
    distance = pd.DataFrame([{"source": "nat", "target": "lesions", "features": "f", "fid": 12.5}])
    row = fid_gain(distance, metrics, "test_auc", {"nat": {"cbr_tiny": "shapes"}}).iloc[0]
    ri = 0.61
    assert row["wt_gain_mean"] == pytest.approx(0.75 - ri)
    assert row["wt_gain_sd"] == pytest.approx(np.std([0.80 - ri, 0.70 - ri], ddof=1))
    assert row["st_share"] == pytest.approx((0.75 - 0.65) / (0.75 - ri))
    assert row["fid"] == 12.5 and row["note"] == ""
    # no ST runs (or no RI runs): a row with a note, never a crash
    no_st = fid_gain(distance, metrics[metrics["init"] != "ST_nat"], "test_auc", {"nat": {"cbr_tiny": "shapes"}})
    assert np.isnan(no_st["st_share"].iloc[0]) and "no ST_nat runs" in no_st["note"].iloc[0]
    no_ri = fid_gain(distance, metrics[metrics["init"] != "RI"], "test_auc", {"nat": {"cbr_tiny": "shapes"}})
    assert np.isnan(no_ri["wt_gain_mean"].iloc[0]) and "no RI runs" in no_ri["note"].iloc[0]


def test_representation_gain_is_scipys_spearman_of_hand_computed_gains():
    rng = np.random.default_rng(6)
    frames = []
    for dataset in ("lesions", "grades"):
        values = {"RI": list(rng.uniform(0.6, 0.7, 3)), "WT_nat": list(rng.uniform(0.7, 0.9, 3)),
                  "ST_nat": list(rng.uniform(0.6, 0.8, 3))}
        frames.append(metrics_frame(values, dataset))
    metrics = pd.concat(frames, ignore_index=True)
    similarity = metrics[["dataset", "arch", "init", "fraction", "seed"]].assign(
        block="block1", block_index=0, measure="linear_cka", value=rng.uniform(0.3, 1.0, len(metrics)))
    points = run_points(similarity, metrics, "test_auc")
    assert "RI" not in set(points["init"])  # left out by default
    table = correlations(points)
    for dataset in ("lesions", "grades", "all"):
        m = metrics if dataset == "all" else metrics[metrics["dataset"] == dataset]
        ri_mean = m[m["init"] == "RI"].groupby("dataset")["test_auc"].mean()
        others = m[m["init"] != "RI"]
        gain = others["test_auc"].to_numpy() - ri_mean.loc[others["dataset"]].to_numpy()
        sim = similarity.loc[others.index, "value"].to_numpy()
        row = table[table["dataset"] == dataset].iloc[0]
        expected = stats.spearmanr(sim, gain)
        assert row["spearman"] == pytest.approx(expected.statistic) and row["p_value"] == pytest.approx(expected.pvalue)
        assert row["n_runs"] == len(others)
    with_ri = run_points(similarity, metrics, "test_auc", include_ri=True)
    assert len(with_ri) == len(metrics)


def test_gain_is_nan_where_the_group_has_no_ri_run():
    metrics = pd.concat([metrics_frame({"RI": [0.6], "WT_nat": [0.7]}), metrics_frame({"WT_nat": [0.8]}, "grades")])
    gains = gain_over_ri(metrics, "test_auc").set_index(["dataset", "init"])
    assert gains.loc[("lesions", "WT_nat"), "gain"] == pytest.approx(0.1)
    assert np.isnan(gains.loc[("grades", "WT_nat"), "gain"])


# ------------------------------------------------------------------------------ predictions


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("task, k", [("binary", 2), ("multiclass", 5), ("ordinal", 4), ("multilabel", 3)])
def test_prediction_similarity_against_scikit_learn_and_numpy(task, k):
    rng = np.random.default_rng(7)
    z = rng.normal(size=(300, k))
    za, zb = z + 0.7 * rng.normal(size=z.shape), z + 0.7 * rng.normal(size=z.shape)
    if task == "multilabel":
        a, b = 1 / (1 + np.exp(-za)), 1 / (1 + np.exp(-zb))
        pa, pb = a >= 0.5, b >= 0.5
        agreement = np.mean([accuracy_score(pa[:, j], pb[:, j]) for j in range(k)])
        kappa = np.mean([cohen_kappa_score(pa[:, j], pb[:, j]) for j in range(k)])
        cols = list(range(k))
    else:
        a, b = softmax(za), softmax(zb)
        pa, pb = a.argmax(1), b.argmax(1)
        agreement, kappa = accuracy_score(pa, pb), cohen_kappa_score(pa, pb)
        cols = [1] if task == "binary" else list(range(k))

    def rank(v):
        return stats.rankdata(v)

    pearson = np.mean([np.corrcoef(a[:, j], b[:, j])[0, 1] for j in cols])
    spearman = np.mean([np.corrcoef(rank(a[:, j]), rank(b[:, j]))[0, 1] for j in cols])
    got = prediction_similarity(task, a, b)
    assert got["agreement"] == pytest.approx(agreement)
    assert got["kappa"] == pytest.approx(kappa)
    assert got["pearson"] == pytest.approx(pearson)
    assert got["spearman"] == pytest.approx(spearman)
    same = prediction_similarity(task, a, a)
    assert same["agreement"] == 1 and same["kappa"] == pytest.approx(1) and same["pearson"] == pytest.approx(1)


def test_kappa_is_nan_not_a_number_when_both_runs_predict_one_class():
    scores = np.tile([0.9, 0.1], (50, 1))
    got = prediction_similarity("binary", scores, scores)
    assert got["agreement"] == 1 and np.isnan(got["kappa"])


def write_predictions(path, scores, labels, task="binary"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.attrs["task"] = task
        handle.create_group("test")
        handle["test"]["scores"], handle["test"]["labels"] = scores.astype(np.float32), labels


def side(tmp_path, dataset, init, seed, scores=None, labels=None):
    run = f"{dataset}/cbr_tiny/{init}/f1/s{seed}"
    path = tmp_path / run / "predictions.h5"
    if scores is not None:
        write_predictions(path, scores, labels)
    return {"run": run, "predictions": str(path),
            "columns": {"dataset": dataset, "arch": "cbr_tiny", "init": init, "fraction": 1.0, "seed": seed}}


def test_a_pair_across_targets_or_without_predictions_names_the_runs(tmp_path):
    rng = np.random.default_rng(8)
    scores, labels = softmax(rng.normal(size=(20, 2))), rng.integers(0, 2, 20)
    a = side(tmp_path, "lesions", "RI", 0, scores, labels)
    b = side(tmp_path, "grades", "RI", 0, scores, labels)
    with pytest.raises(DataError, match="lesions/cbr_tiny/RI/f1/s0 and grades/cbr_tiny/RI/f1/s0 are of different targets"):
        compare_runs(a, b, "test", "inits")
    missing = side(tmp_path, "lesions", "WT_nat", 0)
    with pytest.raises(DataError, match="run lesions/cbr_tiny/WT_nat/f1/s0: .*predictions.h5 does not exist"):
        compare_runs(a, missing, "test", "inits")
    other_images = side(tmp_path, "lesions", "ST_nat", 0, scores, 1 - labels)
    with pytest.raises(DataError, match="different test images"):
        compare_runs(a, other_images, "test", "inits")
    row = compare_runs(a, side(tmp_path, "lesions", "RI", 1, scores, labels), "test", "seeds")
    assert row["agreement"] == 1 and row["kind"] == "seeds" and row["run_b"] == "lesions/cbr_tiny/RI/f1/s1"


def test_prediction_pairs_are_inits_at_one_seed_and_consecutive_seeds_of_one_init():
    config = fid_config(features="natural")
    config["study"]["seeds"] = [0, 1, 2]
    spec = Study(config).prediction_similarity_spec("lesions", "cbr_tiny", "1")
    assert len(spec["runs"]) == 3 * 3
    comparisons = [{**c, "a": spec["runs"][c["a"]], "b": spec["runs"][c["b"]]} for c in spec["comparisons"]]
    inits = [c for c in comparisons if c["kind"] == "inits"]
    seeds = [c for c in comparisons if c["kind"] == "seeds"]
    assert len(inits) == 3 * 3  # C(3 inits, 2) at each of 3 seeds
    assert all(c["a"]["columns"]["seed"] == c["b"]["columns"]["seed"] for c in inits)
    assert len(seeds) == 3 * 2 and all(c["a"]["columns"]["init"] == c["b"]["columns"]["init"] for c in seeds)
    assert {(c["a"]["columns"]["seed"], c["b"]["columns"]["seed"]) for c in seeds} == {(0, 1), (1, 2)}


# ------------------------------------------------------------------------------ pairs state, CCA protocol


def test_pairs_of_init_states_get_a_state_and_final_pairs_do_not_move():
    config = tiny_config()
    before = Study(copy.deepcopy(config)).pairs_spec("lesions", "cbr_tiny", "1")
    config["analysis"]["pairs"].append({"a": "WT_natural", "b": "RI", "state": "init"})
    after = Study(config).pairs_spec("lesions", "cbr_tiny", "1")
    assert [c for c in after["comparisons"] if "state" not in c] == before["comparisons"]
    init = [c for c in after["comparisons"] if c.get("state") == "init"]
    assert {c["pair"] for c in init} == {"WT_natural vs RI (init)", "WT_natural vs WT_natural (init)",
                                         "RI vs RI (init)"}
    assert all(c[s].endswith("/init.h5") for c in init for s in ("a", "b"))
    assert "cca_subsample" not in after


@pytest.mark.filterwarnings("ignore::UserWarning")  # few data points per direction: inflated, on purpose
def test_pairs_rows_carry_their_state(tmp_path):
    from medtransfer.analysis.pairs import similarity_pairs

    rng = np.random.default_rng(9)
    for name in ("a", "b"):
        with h5py.File(tmp_path / f"{name}.h5", "w") as handle:
            handle.attrs["blocks"] = json.dumps(["block1"])
            handle.create_group("blocks")["block1"] = rng.normal(size=(40, 6))
    comparison = {"pair": "x vs y (init)", "kind": "pair", "init_a": "x", "seed_a": 0, "a": str(tmp_path / "a.h5"),
                  "init_b": "y", "seed_b": 0, "b": str(tmp_path / "b.h5"), "state": "init"}
    spec = {"dataset": "d", "arch": "cbr_tiny", "fraction": 1.0, "measures": ["linear_cka"], "comparisons": [comparison]}
    frame = similarity_pairs(spec)
    assert frame["state"].tolist() == ["init"] and "value_sd" not in frame.columns
    frame = similarity_pairs({**spec, "measures": ["cca_mean"],
                              "cca_subsample": {"channels": 4, "positions": 30, "repeats": 3, "seed": 0}})
    assert frame["value_sd"].iloc[0] > 0 and 0 <= frame["value"].iloc[0] <= 1


def test_cca_subsample_keeps_positions_paired_and_equals_the_plain_measure_when_nothing_is_dropped():
    from medtransfer.analysis.measures.cca import cca_mean

    rng = np.random.default_rng(10)
    x = rng.normal(size=(60, 8, 3, 3))
    y = x[:, ::-1] + 0.5 * rng.normal(size=x.shape)
    everything = subsampled(cca_mean, channels=8, positions=60 * 9, repeats=3)
    value, sd = everything(x, y)
    assert value == pytest.approx(cca_mean(x, y)) and sd == pytest.approx(0.0, abs=1e-12)
    # all channels, a subset of positions: x against itself is 1 only if the rows stay paired
    paired, sd = subsampled(cca_mean, channels=8, positions=200, repeats=4)(x, x)
    assert paired == pytest.approx(1.0) and sd == pytest.approx(0.0, abs=1e-9)
    # channel subsets: a mean over repeats with a spread
    value, sd = subsampled(cca_mean, channels=3, positions=200, repeats=5)(x, y)
    assert 0 < value < 1 and sd > 0


def test_cca_subsample_pools_blocks_of_different_grids_to_the_coarser_one():
    from medtransfer.analysis.measures import SimilarityInputError
    from medtransfer.analysis.measures.cca import cca_mean

    rng = np.random.default_rng(11)
    fine, coarse = rng.normal(size=(50, 6, 4, 4)), rng.normal(size=(50, 5, 2, 2))
    with pytest.raises(SimilarityInputError):
        cca_mean(fine, coarse)
    value, _ = subsampled(cca_mean, channels=4, positions=150, repeats=2)(fine, coarse)
    assert 0 <= value <= 1


def test_cca_subsample_needs_a_cca_measure_and_reaches_the_similarity_specs():
    config = tiny_config()
    config["analysis"]["cca_subsample"] = {"channels": 64, "positions": 10000, "repeats": 5}
    with pytest.raises(ConfigError, match="analysis.cca_subsample"):
        Study(copy.deepcopy(config))
    config["analysis"]["measures"] = ["linear_cka", "cca_mean"]
    study = Study(config)
    for spec in (study.similarity_spec("lesions", "cbr_tiny", "1"), study.pairs_spec("lesions", "cbr_tiny", "1")):
        assert spec["cca_subsample"] == {"seed": 0, "channels": 64, "positions": 10000, "repeats": 5}
    assert "cca_subsample" not in Study(tiny_config()).similarity_spec("lesions", "cbr_tiny", "1")


# ------------------------------------------------------------------------------ CLI and figures


def test_the_cli_ends_a_cross_target_pair_in_one_line_naming_both_runs(tmp_path, capsys):
    from medtransfer.cli import main

    rng = np.random.default_rng(12)
    scores, labels = softmax(rng.normal(size=(20, 2))), rng.integers(0, 2, 20)
    a, b = side(tmp_path, "lesions", "RI", 0, scores, labels), side(tmp_path, "grades", "RI", 0, scores, labels)
    spec = {"split": "test", "out": str(tmp_path / "out.csv"), "runs": {a["run"]: a, b["run"]: b},
            "comparisons": [{"kind": "inits", "a": a["run"], "b": b["run"]}]}
    assert main(["prediction-similarity", "--spec", json.dumps(spec)]) == 2
    error = capsys.readouterr().err
    assert "lesions/cbr_tiny/RI/f1/s0 and grades/cbr_tiny/RI/f1/s0" in error and "Traceback" not in error
    assert not (tmp_path / "out.csv").exists()


def fid_gain_csv(path, with_st=True):
    metrics = metrics_frame({"RI": [0.60, 0.62], "WT_nat": [0.80, 0.70], **({"ST_nat": [0.66, 0.64]} if with_st else {})})
    metrics = pd.concat([metrics, metrics_frame({"RI": [0.7, 0.72], "WT_nat": [0.74, 0.8]}, "grades")])
    distance = pd.DataFrame([{"source": "nat", "target": t, "features": "nat@cbr_tiny", "fid": f}
                             for t, f in (("lesions", 12.0), ("grades", 30.0))])
    fid_gain(distance, metrics, "test_auc", {"nat": {"cbr_tiny": "shapes"}}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("with_st", [True, False])
def test_fid_figures_draw_and_say_what_the_study_lacks(tmp_path, with_st):
    from medtransfer.figures.catalog import FIGURES

    csv = fid_gain_csv(tmp_path / "fid_gain.csv", with_st)
    for name in ("fid_gain", "fid_st_share"):
        FIGURES[name].function(csv, tmp_path / f"{name}.pdf")
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    empty = tmp_path / "empty.csv"
    pd.DataFrame(columns=pd.read_csv(csv).columns).to_csv(empty, index=False)
    FIGURES["fid_gain"].function(empty, tmp_path / "empty.pdf")
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_prediction_and_representation_figures_draw(tmp_path):
    from medtransfer.figures.catalog import FIGURES

    rng = np.random.default_rng(13)
    rows = []
    for dataset, fraction, seed in [(d, f, s) for d in ("lesions", "grades") for f in (0.2, 1.0) for s in (0, 1)]:
        inits = ["RI", "ST_nat", "WT_nat"]
        for i, a in enumerate(inits):
            for b in inits[i + 1:]:
                rows.append({"dataset": dataset, "arch": "cbr_tiny", "fraction": fraction, "init_a": a, "init_b": b,
                             "seed_a": seed, "seed_b": seed, "kind": "inits", "agreement": rng.uniform(0.5, 1),
                             "kappa": rng.uniform(0, 1) if seed else np.nan})
            if seed == 0:
                rows.append({"dataset": dataset, "arch": "cbr_tiny", "fraction": fraction, "init_a": a, "init_b": a,
                             "seed_a": 0, "seed_b": 1, "kind": "seeds", "agreement": rng.uniform(0.8, 1),
                             "kappa": np.nan})
    pd.DataFrame(rows).to_csv(tmp_path / "p.csv", index=False)
    FIGURES["prediction_similarity"].function(tmp_path / "p.csv", tmp_path / "p.pdf")
    assert (tmp_path / "p.png").stat().st_size > 0
    metrics = pd.concat([metrics_frame({"RI": [0.6, 0.62], "WT_nat": [0.8, 0.7, 0.75], "ST_nat": [0.6, 0.7]}, d)
                         for d in ("lesions", "grades")], ignore_index=True)
    similarity = pd.concat([metrics[["dataset", "arch", "init", "fraction", "seed"]].assign(
        block=block, block_index=i, measure="linear_cka", value=rng.uniform(0, 1, len(metrics)))
        for i, block in enumerate(("block1", "block2", "head"))], ignore_index=True)
    run_points(similarity, metrics, "test_auc").to_csv(tmp_path / "r.csv", index=False)
    FIGURES["representation_gain"].function(tmp_path / "r.csv", tmp_path / "r.pdf", measure="linear_cka")
    assert (tmp_path / "r.png").stat().st_size > 0
