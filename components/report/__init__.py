"""Report component: HTML evaluation report with figures, Grad-CAM panels and a model card."""
