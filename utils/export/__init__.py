"""Exporting a trained model (ONNX, torch.export, TorchScript), proving the export equals the PyTorch model,
writing its model card, and running an exported ONNX model in place of a checkpoint."""
