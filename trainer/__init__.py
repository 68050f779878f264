"""The Trainer's code. Self-contained: TFX wheels every .py file in this folder as the user module."""
