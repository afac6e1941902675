"""Models and data a user might bring: imported by the tests, and by the command line as
``--model own_models:ClassName`` with this folder on PYTHONPATH."""

import torch
from torch import nn
from torch.utils.data import TensorDataset


class SmallCNN(nn.Module):
    """An MNIST classifier with BatchNorm, as a user might have trained it."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.norm = nn.BatchNorm1d(hidden)
        self.fc1 = nn.Linear(4 * 8 * 8, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class Regressor(nn.Module):
    def __init__(self, inputs: int = 8, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


class TinyTransformer(nn.Module):
    """Token classification: an embedding, one encoder layer, a linear head."""

    def __init__(self, vocabulary: int = 50, width: int = 16, classes: int = 4):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width)
        self.encoder = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embedding(tokens)).mean(1))


class TinyGRU(nn.Module):
    def __init__(self, inputs: int = 8, width: int = 16, classes: int = 3):
        super().__init__()
        self.gru = nn.GRU(inputs, width, batch_first=True)
        self.head = nn.Linear(width, classes)
        self.temperature = nn.Parameter(torch.ones(1))  # a small bare parameter: not worth coding

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1]) / self.temperature


def regression_data(num_examples: int, seed: int, inputs: int = 8) -> TensorDataset:
    """y = sin(x . w) + noise, every number from the seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(inputs, generator=torch.Generator().manual_seed(1234))
    x = torch.randn(num_examples, inputs, generator=generator)
    y = torch.sin(x @ w / inputs**0.5 * 2) + 0.05 * torch.randn(num_examples, generator=generator)
    return TensorDataset(x, y)


def token_data(num_examples: int, seed: int, vocabulary: int = 50, length: int = 6) -> TensorDataset:
    """The class of a sequence is its first token modulo 4."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(vocabulary, (num_examples, length), generator=generator)
    return TensorDataset(tokens, tokens[:, 0] % 4)
