import torch

from keras_pspnet import count_macs, from_preset
from tests.mmseg_reference import PSPNet


def torch_conv_macs(module, size):
    """MACs of every Conv2d, counted with forward hooks on the PyTorch reference."""
    total = []

    def hook(conv, _, output):
        total.append(output.numel() // output.shape[0] * conv.weight[0].numel())

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        module.eval()(torch.zeros(1, 3, *size), aux=False)  # inference: the auxiliary head does not run
    for handle in handles:
        handle.remove()
    return sum(total)


def test_count_macs_equals_pytorch_reference_count():  # of inference: an auxiliary head is not counted
    size = (97, 65)
    model = from_preset("pspnet_resnet50_v1c", 7, aux_head=True, input_shape=(*size, 3), base_width=8,
                        stem_widths=(4, 4, 8), pool_channels=16, head_channels=16, aux_channels=8)
    reference = PSPNet(7, stem_widths=(4, 4, 8), base_width=8, channels=16, aux_channels=8)
    assert count_macs(model) == torch_conv_macs(reference, size)
