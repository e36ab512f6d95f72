"""Language-model implementations behind one small interface."""
