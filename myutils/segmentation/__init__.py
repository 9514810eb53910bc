"""Semi-supervised segmentation (SS-Net tradition): h5/folder data, UNet/VNet, losses, metrics, inference, trainer."""
