"""posterlab: what can a movie poster tell us about its film?

The core library (data, models, training, evaluation, Grad-CAM, inference, export). It never imports
streamlit; only ``posterlab.demo`` imports gradio.
"""

__version__ = "0.1.0"
