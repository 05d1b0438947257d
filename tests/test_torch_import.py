"""Parity with the official PyTorch DNA-Det network: same weights -> same logits."""

import fractions
import pickle

import numpy as np
import pytest

from tfdnadet.errors import TfdnadetError
from tfdnadet.interop.torch_import import import_torch_checkpoint
from tfdnadet.models.detector import MULTICLASS
from tfdnadet.models.model_dir import load_detector

torch = pytest.importorskip("torch", reason="the torch extra is not installed (pip install 'tfdnadet[torch]')")
nn = torch.nn

CLASSES = ["real", "progan", "mmdgan", "sngan", "infomaxgan"]


class Block(nn.Module):
    def __init__(self, nin, nout, kernel, stride):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(nin, nout, kernel, stride, 1), nn.BatchNorm2d(nout), nn.LeakyReLU(0.2))

    def forward(self, x):
        return self.main(x)


class TorchDNADet(nn.Module):
    """The released architecture (Table 7): state-dict keys main.{i}.main.{0,1}.* and classification_head.1.*."""

    def __init__(self, classes):
        super().__init__()
        specs = [(3, 64, 4, 2), (64, 64, 3, 1), (64, 128, 4, 2), (128, 128, 3, 1), (128, 256, 4, 2), (256, 256, 3, 1), (256, 512, 4, 2), (512, 512, 3, 1)]
        self.main = nn.Sequential(*[Block(*spec) for spec in specs])
        self.classification_head = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, classes))

    def forward(self, x):
        return self.classification_head(self.main(x).mean(dim=(2, 3)))


def random_network(classes=len(CLASSES), seed=0):
    torch.manual_seed(seed)
    net = TorchDNADet(classes)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial running statistics
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch")
    net = random_network()
    checkpoint = root / "model.pth"
    torch.save(net.state_dict(), checkpoint)
    import_torch_checkpoint(str(checkpoint), str(root / "model"), CLASSES, image_size=512)
    return net, root


def test_logits_match_pytorch_on_512px_images(converted):
    net, root = converted
    images = np.random.default_rng(0).uniform(-1, 1, (2, 512, 512, 3)).astype("float32")
    with torch.no_grad():
        expected = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    detector = load_detector(str(root / "model"))
    got = np.asarray(detector.heads[MULTICLASS](detector.backbone(images)))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert detector.class_names == CLASSES and detector.preprocessing.input_size == 512


def test_converted_model_reloads_with_identical_predictions(converted, tmp_path):
    _, root = converted
    images = np.random.default_rng(1).uniform(-1, 1, (2, 128, 128, 3)).astype("float32")
    first = load_detector(str(root / "model")).predict(images)[MULTICLASS]
    second = load_detector(str(root / "model")).predict(images)[MULTICLASS]
    np.testing.assert_array_equal(first, second)


def test_pretraining_checkpoint_becomes_a_backbone_without_head(tmp_path):
    net = random_network(classes=170)
    torch.save(net.state_dict(), tmp_path / "pretrain.pth")
    detector = import_torch_checkpoint(str(tmp_path / "pretrain.pth"), str(tmp_path / "model"))
    assert detector.heads == {}
    assert load_detector(str(tmp_path / "model")).backbone.feature_dim == 512
    with pytest.raises(TfdnadetError, match="170 classes"):
        import_torch_checkpoint(str(tmp_path / "pretrain.pth"), str(tmp_path / "m2"), CLASSES)


def test_bad_checkpoints_name_the_first_mismatch(tmp_path):
    state = random_network().state_dict()
    extra = dict(state, **{"main.9.main.0.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(TfdnadetError, match=r"Unexpected key in checkpoint: 'main\.9\.main\.0\.weight'"):
        import_torch_checkpoint(str(tmp_path / "extra.pth"), str(tmp_path / "m"), CLASSES)
    wrong = dict(state, **{"main.2.main.0.weight": torch.zeros(128, 64, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(TfdnadetError, match=r"Shape mismatch for 'main\.2\.main\.0\.weight'"):
        import_torch_checkpoint(str(tmp_path / "wrong.pth"), str(tmp_path / "m"), CLASSES)
    missing = {k: v for k, v in state.items() if k != "main.7.main.1.running_var"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(TfdnadetError, match="Missing key"):
        import_torch_checkpoint(str(tmp_path / "missing.pth"), str(tmp_path / "m"), CLASSES)
    with pytest.raises(TfdnadetError, match="not found"):
        import_torch_checkpoint(str(tmp_path / "nope.pth"), str(tmp_path / "m"), CLASSES)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TfdnadetError, match="is not a PyTorch checkpoint: torch.save writes a zip archive"):
        import_torch_checkpoint(str(tmp_path / "garbage.pth"), str(tmp_path / "m"), CLASSES)
    (tmp_path / "code.pth").write_bytes(pickle.dumps(fractions.Fraction(1, 2), protocol=2))  # a pickle of a class
    with pytest.raises(TfdnadetError, match="Cannot read .*code.pth as a weights-only PyTorch checkpoint"):
        import_torch_checkpoint(str(tmp_path / "code.pth"), str(tmp_path / "m"), CLASSES)


def test_import_torch_command(tmp_path, monkeypatch, capsys):
    from conftest import run_cli

    torch.save(random_network().state_dict(), tmp_path / "model.pth")
    code, _, err = run_cli(["import-torch", tmp_path / "model.pth", "--classes", ",".join(CLASSES), "--out", tmp_path / "m"], monkeypatch, capsys)
    assert code == 0 and "heads: multiclass" in err
    assert load_detector(str(tmp_path / "m")).class_names == CLASSES
    code, _, err = run_cli(["import-torch", tmp_path / "model.pth", "--classes", "real,progan", "--out", tmp_path / "m2"], monkeypatch, capsys)
    assert code == 1 and "5 classes" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["import-torch", tmp_path / "model.pth", "--backbone", "dnadet_spectral", "--out", tmp_path / "m3"], monkeypatch, capsys)
    assert code == 0 and "heads: none" in err and load_detector(str(tmp_path / "m3")).backbone.get_layer("spectral_pool")


def test_missing_torch_is_a_clear_message(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(TfdnadetError, match=r"pip install 'tfdnadet\[torch\]'"):
        import_torch_checkpoint(str(tmp_path / "model.pth"), str(tmp_path / "m"), CLASSES)


def test_encoder_loads_into_the_spatial_branch_of_the_two_domain_backbone(converted, tmp_path):
    from tfdnadet.models.detector import feature_extractor

    net, root = converted
    torch.save(net.state_dict(), tmp_path / "model.pth")
    detector = import_torch_checkpoint(str(tmp_path / "model.pth"), str(tmp_path / "two_domain"), backbone="dnadet_spectral")
    assert detector.heads == {} and type(load_detector(str(tmp_path / "two_domain")).backbone).__name__ == "TwoDomainEncoder"
    images = np.random.default_rng(2).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    names = {"block8"}
    spatial = feature_extractor(detector.backbone, names)(images)["block8"]
    plain = feature_extractor(load_detector(str(root / "model")).backbone, names)(images)["block8"]
    np.testing.assert_allclose(np.asarray(spatial), np.asarray(plain), atol=1e-5)
    with pytest.raises(TfdnadetError, match="needs backbone 'dnadet'"):
        import_torch_checkpoint(str(tmp_path / "model.pth"), str(tmp_path / "m"), CLASSES, backbone="dnadet_spectral")
    with pytest.raises(TfdnadetError, match="no DNA-Det encoder blocks"):
        import_torch_checkpoint(str(tmp_path / "model.pth"), str(tmp_path / "m"), backbone="spectral")
