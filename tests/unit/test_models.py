import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from sergraph.data.graphs import build_graph
from sergraph.models import MODELS, build_model, get_model_class, model_parameters


def graphs(lengths, pad, features=6, seed=0):
    rng = np.random.default_rng(seed)
    return [
        build_graph(
            rng.normal(size=(n, features)).astype(np.float32), 4, 12, pad, i % 3, f"u{i}", "s"
        )
        for i, n in enumerate(lengths)
    ]


def test_unknown_model_lists_names():
    with pytest.raises(ValueError, match="lstm_gin"):
        get_model_class("lstm_gim")


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(ValueError, match="readout"):
        build_model("lstm_gin", 6, 3, readuot="sum")


def test_bad_readout_lists_choices():
    with pytest.raises(ValueError, match="max"):
        build_model("lstm_gin", 6, 3, readout="median")


def test_lstm_gin_matches_paper_sizes():
    model = build_model("lstm_gin", 76, 4)
    assert model.front.lstm.hidden_size == 128 and model.front.lstm.bidirectional
    assert len(model.convs) == 5 and all(conv.eps.requires_grad for conv in model.convs)
    # readout of the input layer (256) and five GIN layers (128 each) is concatenated
    assert model.head.classifier[1].in_features == 256 + 5 * 128
    assert model_parameters("lstm_gin")["use_lstm"] is True


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_shapes_backward_and_step(name):
    torch.manual_seed(0)
    model = build_model(name, 6, 3)
    batch = Batch.from_data_list(graphs([12, 12, 12, 12], pad=True))
    logits = model(batch)
    assert logits.shape == (4, 3)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.nn.functional.cross_entropy(logits, batch.y).backward()
    params = list(model.parameters())
    assert all(p.grad is not None for p in params if p.requires_grad)
    optimizer.step()
    for (name, param), old in zip(model.named_parameters(), before, strict=True):
        # A bias right before BatchNorm has a zero gradient in exact arithmetic (BatchNorm
        # removes it); every parameter with a real gradient must move.
        if param.grad.abs().max() > 1e-6:
            assert not torch.equal(old, param), name
    moved = sum(not torch.equal(old, p) for old, p in zip(before, params, strict=True))
    assert moved >= 0.8 * len(params)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("pad", [True, False])
def test_output_of_a_graph_does_not_depend_on_its_batch(name, pad):
    torch.manual_seed(0)
    model = build_model(name, 6, 3).eval()
    items = graphs([5, 12, 9], pad=pad)
    with torch.no_grad():
        together = model(Batch.from_data_list(items))
        alone = torch.cat([model(Batch.from_data_list([g])) for g in items])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.73])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7,), (32, 1658), (4, 3, 5)])
def test_dropout_draws_torchs_mask_bit_for_bit(p, dtype, shape):
    """The classifier's Dropout: output, gradient and the generator's state afterwards are
    nn.Dropout's under the same seed (a torch whose CPU Bernoulli kernel changed fails here)."""
    from sergraph.models.common import Dropout

    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    results = []
    for layer in (torch.nn.Dropout(p), Dropout(p)):
        inputs = x.clone().requires_grad_(True)
        torch.manual_seed(11)
        out = layer.train()(inputs)
        out.backward(torch.arange(out.numel(), dtype=out.dtype).view(out.shape))
        results.append((out.detach(), inputs.grad, torch.rand(3)))
    (out_a, grad_a, after_a), (out_b, grad_b, after_b) = results
    assert torch.equal(out_a, out_b)
    assert torch.equal(grad_a, grad_b)
    assert torch.equal(after_a, after_b)
    kept = (out_b != 0).double().mean().item()
    if out_b.numel() > 1000:  # a Bernoulli(1 - p) mask: mean within 5 standard errors
        assert abs(kept - (1 - p)) < 5 * (p * (1 - p) / out_b.numel()) ** 0.5


def test_dropout_falls_back_where_its_draw_is_not_torchs():
    from sergraph.models.common import Dropout

    x = torch.randn(6, 5)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    transposed = torch.randn(5, 6).t()  # non-contiguous: nn.Dropout's own path
    torch.manual_seed(3)
    expected = torch.nn.functional.dropout(transposed, 0.5, True)
    torch.manual_seed(3)
    assert torch.equal(Dropout(0.5).train()(transposed), expected)
    head = build_model("lstm_gin", in_channels=4, num_classes=3, dropout=0.2).head.classifier
    assert [type(m) for m in head if isinstance(m, torch.nn.Dropout)] == [Dropout, Dropout]
