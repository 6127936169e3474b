"""Model surgery, one file per host. Import the host module you need, e.g. ``mmtt.patch.timm``."""
