import models.tv_compat as tv_compat


def test_torchvision_imports_and_smp_builds():
    tv = tv_compat.import_torchvision()
    assert hasattr(tv, "__version__")
    import segmentation_models_pytorch as smp

    assert hasattr(smp, "DeepLabV3Plus")
