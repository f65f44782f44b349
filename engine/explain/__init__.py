"""Explanations: the CAM family, saliency, class visualization and faithfulness metrics.

>>> from engine.explain import cam, saliency, class_visualization, evaluate
"""
from engine.explain.classviz import class_visualization
from engine.explain.evaluation import evaluate
from engine.explain.explainers import Explanation, cam, saliency
from engine.explain.targets import OutputMask, Target, parse

__all__ = ["Explanation", "OutputMask", "Target", "cam", "class_visualization", "evaluate", "parse", "saliency"]
