"""ONNX recurrent layers (LSTM, GRU, RNN)."""
