"""The text losses (TinyBERT hidden states, MiniLM attention) against values computed by hand,
their indifference to padding, their gradients, and the adapter that feeds them."""

import math

import pytest
import torch

from kdexport.errors import KdxError
from kdexport.losses import LOSSES, MiniLMAttentionLoss, TinyBERTHiddenLoss, make_loss
from kdexport.modalities.text.features import text_features, use_eager_attention

# student: 1 layer, d_s = 1; teacher: 2 layers, d_t = 2; g(m) = 2m maps (0, 0) and (1, 2).
S_EMB, S_L1 = [[1.0], [3.0]], [[0.0], [1.0]]
T_EMB, T_L1, T_L2 = (
    [[2.0, 0.0], [5.0, -3.0]],
    [[100.0, 100.0], [100.0, 100.0]],
    [[1.0, 0.0], [2.0, -1.0]],
)
W = [[2.0], [-1.0]]  # H W: [1, 3] -> [[2, -1], [6, -3]]; [0, 1] -> [[0, 0], [2, -1]]
# embeddings: diff [[0, -1], [1, 0]], 2 / (2 tokens x 2 dims) = 0.5; layer 1 vs teacher layer 2:
# diff [[-1, 0], [0, 0]], 1 / 4 = 0.25 (teacher layer 1 is skipped)
TINYBERT = 0.75
# dL/dW = sum_m 2 / 4 · sum_t diff_t h_t: [[0 + 3], [-1 + 0]] / 2 + 0 = [[1.5], [-0.5]]
TINYBERT_GRAD_W = [[1.5], [-0.5]]


def _hidden(*layers, pad=0):
    """(1, L + pad, d) tensors; padded positions hold garbage that must not count."""
    out = []
    for layer in layers:
        x = torch.tensor([layer])
        out.append(torch.cat([x, torch.full((1, pad, x.shape[-1]), 7.5)], 1))
    return tuple(out)


def _tinybert():
    loss = TinyBERTHiddenLoss(1, 2, 1, 2)
    with torch.no_grad():
        loss.projection.weight.copy_(torch.tensor(W))
    return loss


def test_tinybert_matches_hand_computation():
    loss = _tinybert()
    assert loss.layer_map() == [(0, 0), (1, 2)]
    value = loss(_hidden(S_EMB, S_L1), _hidden(T_EMB, T_L1, T_L2), None)
    assert value.item() == pytest.approx(TINYBERT, rel=1e-6)


def test_tinybert_ignores_padding():
    loss = _tinybert()
    mask = torch.tensor([[1, 1, 0, 0]])
    padded = loss(_hidden(S_EMB, S_L1, pad=2), _hidden(T_EMB, T_L1, T_L2, pad=2), None, mask)
    assert padded.item() == pytest.approx(TINYBERT, rel=1e-6)


def test_tinybert_gradient():
    loss = _tinybert()
    student = tuple(h.requires_grad_() for h in _hidden(S_EMB, S_L1, pad=1))
    mask = torch.tensor([[1, 1, 0]])
    loss(student, _hidden(T_EMB, T_L1, T_L2, pad=1), None, mask).backward()
    assert torch.allclose(loss.projection.weight.grad, torch.tensor(TINYBERT_GRAD_W))
    assert student[0].grad[0, 2].abs().sum() == 0  # the padded token gets no gradient
    assert student[0].grad[0, :2].abs().sum() > 0


def test_tinybert_layer_counts_must_map_uniformly():
    with pytest.raises(KdxError, match="do not map onto the student's 2 uniformly"):
        TinyBERTHiddenLoss(8, 16, 2, 3)
    with pytest.raises(KdxError, match="built for 1 student and 2 teacher layers, got 1 and 1"):
        _tinybert()(_hidden(S_EMB, S_L1), _hidden(T_EMB, T_L2), None)


# attention of one sample, 2 heads, 2 real tokens; head 2 is the same in both models (KL 0)
A_T = [[[0.5, 0.5], [0.9, 0.1]], [[0.3, 0.7], [0.6, 0.4]]]
A_S = [[[0.25, 0.75], [0.5, 0.5]], [[0.3, 0.7], [0.6, 0.4]]]
KL_00 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
KL_01 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
MINILM = (KL_00 + KL_01 + 0 + 0) / (2 * 2)  # over 2 heads x 2 query positions


def _attention(maps, pad=0):
    """(1, heads, L + pad, L + pad): real queries put no weight on padded keys (as the models
    do); padded queries hold an arbitrary distribution that must not count."""
    a = torch.tensor([maps])
    n = a.shape[-1] + pad
    out = torch.zeros(1, a.shape[1], n, n)
    out[..., : a.shape[-1], : a.shape[-1]] = a
    out[..., a.shape[-1] :, :] = 1.0 / n
    return out


def test_minilm_matches_hand_computation():
    value = MiniLMAttentionLoss(2, 2)((_attention(A_S),), (_attention(A_T),), None)
    assert value.item() == pytest.approx(MINILM, rel=1e-6)
    assert MiniLMAttentionLoss(2, 2)(_attention(A_T), _attention(A_T), None).item() == 0.0


def test_minilm_ignores_padding_and_reads_the_last_layer():
    mask = torch.tensor([[1, 1, 0]])
    first = _attention(A_T, pad=1)  # an earlier layer: not compared
    student, teacher = (first, _attention(A_S, pad=1)), (first, _attention(A_T, pad=1))
    value = MiniLMAttentionLoss(2, 2)(student, teacher, None, mask)
    assert value.item() == pytest.approx(MINILM, rel=1e-6)


def test_minilm_gradient():
    mask = torch.tensor([[1, 1, 0]])
    a_s = _attention(A_S, pad=1).requires_grad_()
    a_t = _attention(A_T, pad=1)
    MiniLMAttentionLoss(2, 2)(a_s, a_t, None, mask).backward()
    # dKL/dA_s = -A_t / A_s / (heads x real queries) on real query rows and keys, 0 elsewhere
    expected = torch.zeros_like(a_s)
    expected[..., :2, :2] = -a_t[..., :2, :2] / a_s.detach()[..., :2, :2] / 4
    assert torch.allclose(a_s.grad, expected)


def test_minilm_needs_the_same_heads():
    with pytest.raises(KdxError, match=r"same number of attention heads \(student 4, teacher 12\)"):
        MiniLMAttentionLoss(4, 12)


def test_text_losses_are_registered_but_not_built_without_sizes():
    assert LOSSES["tinybert_hidden"] is TinyBERTHiddenLoss
    assert LOSSES["minilm_attention"] is MiniLMAttentionLoss
    with pytest.raises(KdxError, match="takes a transformer's hidden_states"):
        make_loss("tinybert_hidden", 1.0, None)


def _bert(layers, hidden, seed):
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    use_eager_attention(model)
    return model


def test_features_of_real_models_and_padding():
    """Through the adapter: a sample alone and padded give the same losses; the student and
    the projection get gradients, the teacher none."""
    teacher, student = _bert(2, 32, 0), _bert(1, 16, 1)
    hidden, attn = TinyBERTHiddenLoss(16, 32, 1, 2), MiniLMAttentionLoss(2, 2)
    ids = torch.randint(1, 100, (1, 5), generator=torch.Generator().manual_seed(0))
    alone = {"input_ids": ids, "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    padded = {
        "input_ids": torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1),
        "attention_mask": torch.tensor([[1] * 5 + [0] * 4]),
    }
    values = []
    for batch in (alone, padded):
        s = text_features(student, batch)
        with torch.no_grad():
            t = text_features(teacher, batch)
        assert len(s.hidden_states) == 2 and len(t.attentions) == 2
        length = batch["input_ids"].shape[1]
        assert s.attentions[-1].shape == (1, 2, length, length)
        mask = batch["attention_mask"]
        h = hidden(s.hidden_states, t.hidden_states, None, mask)
        a = attn(s.attentions, t.attentions, None, mask)
        values.append((h.item(), a.item()))
    assert values[1] == pytest.approx(values[0], rel=1e-5, abs=1e-7)
    student.zero_grad()
    (h + a).backward()
    assert hidden.projection.weight.grad.abs().sum() > 0
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in teacher.parameters())


def test_features_without_eager_attention_is_one_line():
    import transformers

    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        attn_implementation="sdpa",
    )
    model = transformers.BertForSequenceClassification(config).eval()
    batch = {"input_ids": torch.ones(1, 4, dtype=torch.long)}
    with pytest.raises(KdxError, match="no attention distributions.*use_eager_attention"):
        text_features(model, batch)
    assert text_features(model, batch, attentions=False).attentions is None
