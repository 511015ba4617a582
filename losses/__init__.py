"""Training losses of Sec. III-D (Eq. 16–17)."""
from losses.fusion_losses import (  # noqa: F401
    LossSettings,
    UAAFusionLoss,
    gradient_loss,
    intensity_loss,
    segmentation_loss,
)
