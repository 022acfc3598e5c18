"""Quantization-aware training leaves the student's own keys and float weights behind."""

import torch

from kdexport.train.qat import fake_quantized
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


def test_quant_aware_distillation_exports_a_plain_student(run_copy):
    from kdexport.context import Run
    from kdexport.distill import distill
    from kdexport.export import export
    from kdexport.pipeline import load_recipe as load

    r = load(run_copy / "recipe.toml", ["distill.quant_aware=true", "distill.epochs=1"])
    art = distill(Run(run_copy, r["data"]), **r["distill"])
    assert art.parameters["quant_aware"] is True
    state = torch.load(art.file("model.pt"), weights_only=True)
    assert set(state) == set(create_model("zoo:digits-cnn-small", 10, 1).state_dict())
    assert export(Run(run_copy, r["data"]), **r["export"]).checks["student"]["parity"]["passed"]
