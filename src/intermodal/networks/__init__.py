"""Registration networks: a 2D/3D U-Net predicting a velocity field, and the full model."""

from intermodal.networks.unet import RegistrationModel, RegistrationOutput, RegistrationUNet

__all__ = ["RegistrationModel", "RegistrationOutput", "RegistrationUNet"]
