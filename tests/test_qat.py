"""Quantization-aware training leaves the student's own keys and float weights behind."""

import torch

from kdexport.qat import fake_quantized
from kdexport.zoo import create_model


def test_fake_quantized_round_trip():
    torch.manual_seed(0)
    model = create_model("zoo:digits-cnn-small", 10, 1)
    keys = set(model.state_dict())
    x = torch.rand(8, 1, 8, 8)
    float_out = model.eval()(x)
    with fake_quantized(model):
        model.train()
        model(x)  # observers see data
        model.eval()
        quant_out = model(x)
        assert not torch.equal(quant_out, float_out)  # INT8 is simulated inside
        assert (quant_out - float_out).abs().max() < 0.5
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = model(x).square().mean()
        loss.backward()  # straight-through gradients reach the float weights
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        opt.step()
    assert set(model.state_dict()) == keys
    assert not any("kdx_out_fq" in n for n, _ in model.named_modules())
    assert model.eval()(x).shape == (8, 10)
