import numpy as np
import pytest
import torch

from sergraph.data.graphs import Normalizer, build_graph, check_k, fit_length, temporal_edge_index


def adjacency(edge_index, n):
    a = np.zeros((n, n), dtype=int)
    a[edge_index[0].numpy(), edge_index[1].numpy()] = 1
    return a


# Hand-written adjacency of a 6-node temporal graph for each k (k/2 neighbours each side).
HAND = {
    2: ["010000", "101000", "010100", "001010", "000101", "000010"],
    4: ["011000", "101100", "110110", "011011", "001101", "000110"],
    6: ["011100", "101110", "110111", "111011", "011101", "001110"],
    8: ["011110", "101111", "110111", "111011", "111101", "011110"],
}


@pytest.mark.parametrize("k", [2, 4, 6, 8])
def test_edges_match_hand_written_adjacency(k):
    expected = np.array([[int(c) for c in row] for row in HAND[k]])
    edge_index = temporal_edge_index(6, k)
    assert (adjacency(edge_index, 6) == expected).all()
    assert edge_index.shape[1] == expected.sum()  # no duplicate edges


def test_edges_are_undirected_without_self_loops():
    edge_index = temporal_edge_index(120, 4)
    a = adjacency(edge_index, 120)
    assert (a == a.T).all() and a.trace() == 0
    assert edge_index.shape[1] == 2 * (119 + 118)


@pytest.mark.parametrize("k,max_nodes", [(3, 120), (0, 120), (120, 120), (-2, None)])
def test_bad_k_rejected(k, max_nodes):
    with pytest.raises(ValueError, match="graph.k"):
        check_k(k, max_nodes)


def test_fit_length_pads_and_cuts():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded, n = fit_length(x, 5)
    assert n == 3 and padded.shape == (5, 2)
    assert padded[:3].tolist() == x.tolist() and padded[3:].tolist() == [[0, 0], [0, 0]]
    cut, n = fit_length(x, 2)
    assert n == 2 and cut.tolist() == [[0, 1], [2, 3]]


def test_normalizer_uses_only_given_frames():
    a = np.array([[1.0, 5.0], [3.0, 5.0]])
    b = np.array([[5.0, 5.0]])
    norm = Normalizer.fit([a, b])
    # mean (1+3+5)/3 = 3, population std sqrt(8/3); constant column gets std 1
    assert norm.mean.tolist() == [3.0, 5.0]
    assert norm.std[0] == pytest.approx(np.sqrt(8 / 3), rel=1e-6) and norm.std[1] == 1.0
    assert norm(np.array([[3.0, 6.0]])).tolist() == [[0.0, 1.0]]


def test_padded_graph_has_zero_padding_after_normalisation():
    x = np.ones((3, 2), dtype=np.float32) * 7
    data = build_graph(x, k=2, max_nodes=5, pad=True, y=2, utterance="u1", speaker="s")
    assert data.num_nodes == 5 and int(data.n_valid) == 3
    assert torch.equal(data.x[3:], torch.zeros(2, 2))
    assert data.edge_index.shape[1] == 8  # line graph over all 5 nodes
    assert int(data.y) == 2 and data.utterance == "u1"


def test_true_length_graph_has_no_padding():
    data = build_graph(
        np.ones((3, 2), np.float32), k=4, max_nodes=5, pad=False, y=0, utterance="u", speaker="s"
    )
    assert data.num_nodes == 3 and data.edge_index.shape[1] == 6
    long = build_graph(
        np.ones((9, 2), np.float32), k=2, max_nodes=5, pad=False, y=0, utterance="u", speaker="s"
    )
    assert long.num_nodes == 5
