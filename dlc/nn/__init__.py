"""dlc.nn: modules, layers, losses, initializers and the training API (compile_step, compile_eval, fit)."""

# ruff: noqa: F401  (this module re-exports the layers, losses and training API)
from ..train import History, TrainStep, compile_eval, compile_step, fit
from . import functional, init
from .activation import ELU, GELU, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Softplus, Tanh
from .conv import AdaptiveAvgPool2d, AvgPool2d, Conv1d, Conv2d, ConvTranspose2d, MaxPool2d
from .decoding import KVCache, Sampler, attention_step, compile_sampler, encoder_layer_step
from .init import manual_seed
from .layers import Dropout, Embedding, Flatten, Identity, Linear, Unflatten
from .losses import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    L1Loss,
    MSELoss,
    NLLLoss,
    accuracy,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    l1_loss,
    mse_loss,
    nll_loss,
)
from .module import Module, ModuleList, Sequential, StateUpdates, collect_updates
from .norm import BatchNorm1d, BatchNorm2d, LayerNorm
from .rnn import GRU, LSTM, RNN
from .transformer import (
    LearnedPositionalEncoding,
    MultiheadAttention,
    SinusoidalPositionalEncoding,
    TransformerDecoderLayer,
    TransformerEncoderLayer,
)
