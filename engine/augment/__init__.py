"""Batch-first image augmentation on OpenCV/NumPy.

>>> import numpy as np
>>> from engine.augment import Compose, HorizontalFlip, Rotate
>>> out = Compose([HorizontalFlip(p=0.5), Rotate(angle=(-30, 30))])(
...     np.zeros((4, 32, 32, 3), np.uint8), seed=0)
"""
from engine.augment.composition import Compose, OneOf
from engine.augment.op import Op
from engine.augment.streams import Streams
from engine.augment.geometric import (Affine, CenterCrop, HorizontalFlip, Perspective,
                                      RandomCrop, RandomResizedCrop, Resize, Rotate, Rotate90,
                                      Shear, Translate, VerticalFlip)
from engine.augment.mixing import CutMix, MixUp
from engine.augment.photometric import (AutoContrast, Brightness, CoarseDropout, Contrast,
                                        Equalize, Erasing, Gamma, GaussianBlur, GaussianNoise,
                                        Grayscale, Hue, Posterize, Saturation, Sharpness,
                                        Solarize)
from engine.augment.policies import RandAugment, TrivialAugment

__all__ = ["Affine", "AutoContrast", "Brightness", "CenterCrop", "CoarseDropout", "Compose",
           "Contrast", "CutMix", "Equalize", "Erasing", "Gamma", "GaussianBlur",
           "GaussianNoise", "Grayscale", "HorizontalFlip", "Hue", "MixUp", "OneOf", "Op",
           "Perspective", "Posterize", "RandAugment", "RandomCrop", "RandomResizedCrop",
           "Resize", "Rotate", "Rotate90", "Saturation", "Sharpness", "Shear", "Solarize",
           "Streams", "Translate", "TrivialAugment", "VerticalFlip"]
