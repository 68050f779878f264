"""TFX Pusher with an atomic, de-duplicating filesystem push in TF Serving's layout."""
