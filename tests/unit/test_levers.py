"""Training-only levers: the speaker adversary (gradient reversal), mixup of embeddings, and the
GPS graph-transformer family (issue 16)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch_geometric.data import Batch

from sergraph.config import compose, identity
from sergraph.data.datamodule import FoldDataModule
from sergraph.data.folds import Fold
from sergraph.data.graphs import build_graph
from sergraph.models import build_model
from sergraph.models.gps import GPS, GPSLayer
from sergraph.training.levers import (
    GradientReversal,
    classifier_input,
    draw_mixup,
    emotion_classifier,
    mix,
    speaker_targets,
)
from sergraph.training.module import SERModule

SMALL = {"hidden": 8, "num_layers": 2, "classifier_hidden": 8, "use_lstm": False}


def batch_of(lengths, features=6, seed=0, speakers=None):
    rng = np.random.default_rng(seed)
    speakers = speakers or ["s1"] * len(lengths)
    return Batch.from_data_list(
        [
            build_graph(
                rng.normal(size=(n, features)).astype(np.float32),
                2,
                max(lengths),
                False,
                i % 3,
                f"u{i}",
                speakers[i],
            )
            for i, n in enumerate(lengths)
        ]
    )


# --- gradient reversal -----------------------------------------------------------------------


def test_gradient_reversal_is_identity_forward_and_scales_the_gradient_by_minus_lambda():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = GradientReversal(0.3)(x)
    assert torch.equal(y, x)
    # d/dx sum(w * y) = w without reversal; with it: -0.3 * w
    (torch.tensor([2.0, 5.0, -1.0]) * y).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.6, -1.5, 0.3]))


def test_gradient_reversal_of_zero_stops_the_gradient():
    x = torch.ones(2, requires_grad=True)
    (3 * GradientReversal(0.0)(x)).sum().backward()
    assert torch.equal(x.grad, torch.zeros(2))


# --- the embedding and mixup -----------------------------------------------------------------


def test_the_embedding_is_the_pooled_layers_and_u_and_capturing_it_changes_nothing():
    torch.manual_seed(0)
    model = build_model("lstm_gin", 6, 3, global_channels=2, readout="mean", **SMALL).eval()
    batch = batch_of([5, 7, 4])
    batch.u = torch.randn(3, 2)
    with torch.no_grad():
        plain = model(batch)
        with classifier_input(emotion_classifier(model, "x"), None) as seen:
            captured = model(batch)
    assert torch.equal(plain, captured) and len(seen) == 1
    # mean readout of the input layer first, then each layer (width 8), then u
    embedding = seen[0]
    assert embedding.shape == (3, 6 + 2 * 8 + 2)
    means = torch.stack([batch.x[batch.batch == g].mean(0) for g in range(3)])
    assert torch.allclose(embedding[:, :6], means, atol=1e-6)
    assert torch.equal(embedding[:, -2:], batch.u)
    assert len(model.head.classifier._forward_pre_hooks) == 0  # removed after the block


def test_mix_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]])
    perm = torch.tensor([2, 0, 1])
    expected = torch.tensor([[0.25 + 3.0, 3.0], [0.75, 0.5], [1.0, 1.0 + 1.5]])
    assert torch.allclose(mix(z, 0.25, perm), expected)


def test_draw_mixup_comes_from_the_global_generator():
    torch.manual_seed(3)
    lam, perm = draw_mixup(0.2, 5)
    torch.manual_seed(3)
    assert draw_mixup(0.2, 5)[0] == lam
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == [0, 1, 2, 3, 4]


def module_of(**kwargs):
    torch.manual_seed(0)
    return SERModule("lstm_gin", dict(SMALL), 6, ["a", "b", "c"], **kwargs)


def test_mixup_training_loss_equals_the_hand_computation(monkeypatch):
    module = module_of(augment={"mixup": 0.4}).eval()  # eval: no dropout or BatchNorm updates
    batch = batch_of([5, 7, 4, 6])
    batch.y = torch.tensor([0, 1, 2, 1])
    lam, perm = 0.3, torch.tensor([1, 2, 3, 0])
    monkeypatch.setattr("sergraph.training.module.draw_mixup", lambda alpha, n: (lam, perm))
    loss = module.training_step(batch, 0)
    with torch.no_grad(), classifier_input(module.model.head.classifier) as seen:
        module(batch)
    z = seen[0]
    mixed = lam * z + (1 - lam) * z[perm]
    logits = module.model.head.classifier(mixed)
    expected = lam * F.cross_entropy(logits, batch.y) + (1 - lam) * F.cross_entropy(
        logits, batch.y[perm]
    )
    assert torch.allclose(loss, expected, atol=1e-6)
    # never in evaluation: the validation loss is the plain cross-entropy of the plain forward
    module.validation_step(batch, 0)
    plain = F.cross_entropy(module(batch), batch.y)
    assert torch.allclose(module.val_loss.compute(), plain, atol=1e-6)


def test_levers_are_off_by_default_and_zero_changes_nothing():
    cfg = compose([])
    assert cfg.augment.mixup == 0.0 and cfg.optim.speaker_adversary == 0.0
    # at their defaults the new keys leave every run id as it was
    before = compose(["optim.lr=0.01"])
    assert identity(before) == identity(compose(["optim.lr=0.01", "augment.mixup=0.0"]))
    assert identity(before) != identity(compose(["optim.lr=0.01", "augment.mixup=0.2"]))
    assert identity(before) != identity(compose(["optim.lr=0.01", "optim.speaker_adversary=1"]))
    default = module_of()
    zero = module_of(speaker_adversary=0.0, train_speakers=["s1"], augment={"mixup": 0.0})
    assert default.speaker_head is None and zero.speaker_head is None and zero.mixup == 0.0
    assert default.state_dict().keys() == zero.state_dict().keys()
    assert all(torch.equal(v, zero.state_dict()[k]) for k, v in default.state_dict().items())
    batch = batch_of([5, 7, 4])
    losses = []
    for module in (default, zero):
        torch.manual_seed(1)  # the same dropout draws
        losses.append(module.training_step(batch, 0))
        assert len(module.model.head.classifier._forward_pre_hooks) == 0
    assert torch.equal(losses[0], losses[1])
    torch.manual_seed(1)
    assert torch.equal(losses[0], F.cross_entropy(default(batch), batch.y))


def test_negative_levers_are_refused():
    with pytest.raises(ValueError, match="augment.mixup"):
        compose(["augment.mixup=-0.1"])
    with pytest.raises(ValueError, match="optim.speaker_adversary"):
        compose(["optim.speaker_adversary=-1"])


# --- the speaker adversary -------------------------------------------------------------------


def test_speaker_adversary_loss_is_emotion_plus_speaker_cross_entropy():
    module = module_of(speaker_adversary=0.5, train_speakers=["s1", "s2"]).eval()
    head = module.speaker_head
    # input width: the classifier's (6 + 2 * 8); hidden: classifier_hidden; one class per speaker
    assert head.classifier[0].in_features == 22 and head.classifier[0].out_features == 8
    assert head.classifier[-1].out_features == 2 and head.reverse.scale == 0.5
    batch = batch_of([5, 7, 4], speakers=["s2", "s1", "s2"])
    loss = module.training_step(batch, 0)
    with torch.no_grad(), classifier_input(module.model.head.classifier) as seen:
        logits = module(batch)
    expected = F.cross_entropy(logits, batch.y) + F.cross_entropy(
        head(seen[0]), torch.tensor([1, 0, 1])
    )
    assert torch.allclose(loss, expected, atol=1e-6)


def test_the_embedding_gets_the_emotion_gradient_minus_lambda_times_the_speaker_gradient():
    batch = batch_of([5, 7, 4], speakers=["s2", "s1", "s2"])
    target = torch.tensor([1, 0, 1])
    for scale in (1.0, 0.25):
        module = module_of(speaker_adversary=scale, train_speakers=["s1", "s2"]).eval()
        kept = []

        def keep(classifier, args, kept=kept):
            args[0].retain_grad()
            kept.append(args[0])

        module.model.head.classifier.register_forward_pre_hook(keep)
        module.training_step(batch, 0).backward()
        z = kept[0]
        # the two gradients separately, on detached copies of the embedding
        ze = z.detach().requires_grad_()
        F.cross_entropy(module.model.head.classifier(ze), batch.y).backward()
        zs = z.detach().requires_grad_()
        F.cross_entropy(module.speaker_head.classifier(zs), target).backward()
        assert zs.grad.abs().sum() > 0
        assert torch.allclose(z.grad, ze.grad - scale * zs.grad, atol=1e-7)


def test_speaker_targets_refuse_a_speaker_outside_training():
    index = {"s1": 0, "s2": 1}
    assert speaker_targets(["s2", "s1"], index).tolist() == [1, 0]
    with pytest.raises(RuntimeError, match="'s9'.*training speakers"):
        speaker_targets(["s1", "s9"], index)


def test_a_model_without_a_classifier_is_named():
    class Plain(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="optim.speaker_adversary"):
        emotion_classifier(Plain(), "optim.speaker_adversary")


def test_short_training_run_the_speaker_head_sees_only_training_speakers(toy_table, toy_features):
    fold = Fold(0, ("s1", "s2"), ("s3",), ("s4",))
    data = FoldDataModule(toy_table, toy_features, fold, ["angry", "neutral", "sad"], k=2)
    data.setup()
    module = module_of(
        speaker_adversary=0.3, train_speakers=list(fold.train_speakers), augment={"mixup": 0.2}
    )
    module.hparams.lr = 1e-2
    calls = []

    def record(head, args, output):
        calls.append((module.trainer.training, args[0].shape[0]))

    module.speaker_head.register_forward_hook(record)

    class Speakers(Callback):
        seen: set = set()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen |= set(batch.speaker)

    before = [p.detach().clone() for p in module.speaker_head.parameters()]
    speakers = Speakers()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[speakers],
    )
    trainer.fit(module, datamodule=data)
    assert trainer.callback_metrics["train/speaker_loss"] > 0
    trainer.test(module, datamodule=data, verbose=False)
    assert speakers.seen == {"s1", "s2"}
    # called in training only, once per training utterance per epoch
    assert all(training for training, _ in calls)
    assert sum(n for _, n in calls) == 2 * len(data.datasets["train"])
    after = list(module.speaker_head.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


# --- GPS -------------------------------------------------------------------------------------


def test_gps_shapes_and_first_layer_projection():
    torch.manual_seed(0)
    model = build_model("gps", 6, 3, hidden=8, num_layers=2, heads=2, classifier_hidden=8)
    assert isinstance(model, GPS) and all(isinstance(c, GPSLayer) for c in model.convs)
    assert model.convs[0].project.in_features == 6 and model.convs[1].project is None
    assert model.convs[0].conv.attn.num_heads == 2
    assert model(batch_of([5, 7, 4])).shape == (3, 3)
    with pytest.raises(ValueError, match="heads=3"):
        build_model("gps", 6, 3, hidden=8, heads=3)


def test_gps_permuting_the_graphs_of_a_batch_permutes_the_outputs():
    torch.manual_seed(0)
    model = build_model("gps", 6, 3, hidden=8, num_layers=2, heads=2, classifier_hidden=8).eval()
    lengths = [5, 9, 4, 7]
    graphs = batch_of(lengths).to_data_list()
    order = [2, 0, 3, 1]
    with torch.no_grad():
        out = model(Batch.from_data_list(graphs))
        permuted = model(Batch.from_data_list([graphs[i] for i in order]))
    assert torch.allclose(permuted, out[order], atol=1e-5)


def test_gps_attention_needs_the_batch_vector():
    # without it (one graph for all nodes) the attention mixes the graphs: the base passes it
    torch.manual_seed(0)
    layer = GPSLayer(4, 4, heads=2, attn_dropout=0.0, train_eps=True).eval()
    batch = batch_of([3, 5], features=4)
    with torch.no_grad():
        apart = layer(batch.x, batch.edge_index, batch.batch)
        together = layer(batch.x, batch.edge_index, None)
        first = layer(batch.x[:3], batch.edge_index[:, batch.edge_index[0] < 3], None)
    assert torch.allclose(apart[:3], first, atol=1e-5)
    assert not torch.allclose(apart, together, atol=1e-4)


def test_gps_composes_with_the_recipe_and_takes_a_training_step():
    cfg = compose(["experiment=best_emodb", "model.name=gps"])
    from sergraph.config import model_spec

    family, params = model_spec(cfg)
    assert family == "gps" and params["hidden"] == 64 and params["train_eps"] is True
    torch.manual_seed(0)
    module = SERModule(family, params, 6, ["a", "b", "c"], global_channels=2, lr=1e-2)
    batch = batch_of([5, 7, 4, 6])
    batch.u = torch.randn(4, 2)
    optimizer = module.configure_optimizers()
    before = [p.detach().clone() for p in module.parameters()]
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    moved = sum(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    assert torch.isfinite(loss) and moved >= 0.8 * len(before)


# --- a real run on the synthetic corpus, and its bundle ---------------------------------------


@pytest.mark.slow
def test_adversarial_mixup_run_on_synthetic_corpus_exports_a_bundle_that_predicts_as_the_run(
    tmp_path,
):
    from sergraph.deploy.bundle import export_bundle, load_bundle
    from sergraph.results.layout import read_metrics
    from sergraph.training.study import run_study

    run_study(
        [
            f"data.root={tmp_path / 'corpus'}",
            "data.options.n_speakers=4",
            "data.options.n_per_class=3",
            "folds.only=[0]",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "optim.lr=1e-3",
            "optim.speaker_adversary=0.3",
            "augment.mixup=0.2",
            "features.workers=1",
            f"features.cache_dir={tmp_path / 'features'}",
            f"run.out_dir={tmp_path / 'runs'}",
            "logger.kind=none",
        ]
    )
    cell = tmp_path / "runs" / "synthetic" / "lstm_gin" / "seed-0" / "fold-00"
    record = read_metrics(cell)
    checkpoint = torch.load(cell / record["checkpoint"], map_location="cpu", weights_only=False)
    # the speaker head's classes are the fold's training speakers, none of val/test
    assert checkpoint["hyper_parameters"]["train_speakers"] == record["train_speakers"]
    assert not set(record["train_speakers"]) & set(record["val_speakers"] + record["test_speakers"])
    width = len(record["train_speakers"])
    assert checkpoint["state_dict"]["speaker_head.classifier.2.weight"].shape[0] == width
    # the bundle holds the emotion model alone and predicts what the run predicted
    path, _ = export_bundle(cell, tmp_path / "fold0.sergraph")
    saved = pd.read_csv(cell / "predictions.csv")
    corpus = next((tmp_path / "corpus").glob("synthetic-*"))
    paths = [str(corpus / "wav" / f"{u}.wav") for u in saved["utterance"]]
    bundle = load_bundle(path, map_location="cpu")
    frame = bundle.predict(paths, batch_size=5, cache_dir=tmp_path / "fresh", progress=False)
    np.testing.assert_allclose(
        frame.filter(like="p_").to_numpy(float), saved.filter(like="p_").to_numpy(float), atol=1e-5
    )
    assert list(frame["emotion"]) == list(saved["predicted"])
