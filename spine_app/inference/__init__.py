"""Running the trained model on studies: ``run`` (inputs -> studies -> the bundle's inference
config -> output folder), ``view_guess`` (AP or LAT from the pixels) and ``export`` (TorchScript,
ONNX). Import the modules themselves (nothing is imported here, so ``spine-app`` starts light)."""
