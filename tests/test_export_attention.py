"""ESPnet's attention in its export forms (``onnx_export.export_attention``) gives the
stock module's values bit for bit, padded batches included, and leaves nothing behind;
so does the linear-size padding mask (``onnx_export.linear_pad_masks``)."""

from __future__ import annotations

import pytest
import torch
from espnet.nets.pytorch_backend.transformer.attention import (
    MultiHeadedAttention,
    RelPositionMultiHeadedAttention,
)
from espnet.nets.pytorch_backend.transformer.embedding import RelPositionalEncoding

from espnet_allinone.deploy.onnx_export import (
    export_attention,
    linear_pad_mask,
    linear_pad_masks,
)


def _inputs(lengths: list[int], dim: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    t = max(lengths)
    x = torch.randn(len(lengths), t, dim)
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).unsqueeze(1)
    _, pos = RelPositionalEncoding(dim, 0.0)(x)
    return x, pos, mask


@pytest.mark.parametrize("lengths", [[37], [37, 20, 1]])
def test_rel_pos_attention_is_bit_identical(lengths):
    torch.manual_seed(1)
    attn = RelPositionMultiHeadedAttention(4, 32, 0.0).eval()
    torch.nn.init.normal_(attn.pos_bias_u)
    torch.nn.init.normal_(attn.pos_bias_v)
    x, pos, mask = _inputs(lengths)
    with torch.no_grad():
        want = attn(x, x, x, pos, mask)
        with export_attention(attn):
            assert set(vars(attn)) >= {"rel_shift", "forward_attention"}
            got = attn(x, x, x, pos, mask)
    assert torch.equal(got, want)
    assert "rel_shift" not in vars(attn) and "forward_attention" not in vars(attn)


def test_plain_attention_mask_is_bit_identical():
    torch.manual_seed(2)
    attn = MultiHeadedAttention(4, 32, 0.0).eval()
    x, _, mask = _inputs([29, 11])
    with torch.no_grad():
        want = attn(x, x, x, mask)
        with export_attention(attn):
            got = attn(x, x, x, mask)
    assert torch.equal(got, want)


def test_a_subclass_with_its_own_forms_keeps_them():
    class OwnShift(RelPositionMultiHeadedAttention):
        def rel_shift(self, x):
            return super().rel_shift(x)

    attn = OwnShift(4, 32, 0.0).eval()
    with export_attention(attn):
        assert "rel_shift" not in vars(attn)  # its own override runs
        assert "forward_attention" in vars(attn)
    assert "forward_attention" not in vars(attn)


@pytest.mark.parametrize("lengths", [[7], [5, 3, 1], [4, 9, 9, 2]])
def test_linear_pad_mask_equals_espnets(lengths):
    from espnet.nets.pytorch_backend.nets_utils import make_pad_mask

    lengths = torch.tensor(lengths)
    assert torch.equal(linear_pad_mask(lengths, stock=make_pad_mask), make_pad_mask(lengths))
    xs = torch.zeros(len(lengths), 3, int(lengths.max()))  # other calls: ESPnet's own
    assert torch.equal(linear_pad_mask(lengths, xs, stock=make_pad_mask),
                       make_pad_mask(lengths, xs))


def test_linear_pad_masks_patch_the_encoders_and_restore_them():
    from espnet.nets.pytorch_backend import nets_utils
    from espnet2.asr.encoder import conformer_encoder

    stock = nets_utils.make_pad_mask
    with linear_pad_masks():
        assert conformer_encoder.make_pad_mask is not stock
        mask = conformer_encoder.make_pad_mask(torch.tensor([3, 1]))
    assert conformer_encoder.make_pad_mask is stock
    assert torch.equal(mask, stock(torch.tensor([3, 1])))
