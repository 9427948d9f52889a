import torch
import torch.nn as nn


class BaseModel(nn.Module):
    """Base class for the models: a ``forward`` plus a readable summary with parameter counts.

    Examples:
        >>> class TinyNet(BaseModel):
        ...     def __init__(self, num_classes=10):
        ...         super().__init__()
        ...         self.fc = nn.Linear(64, num_classes)
        ...     def forward(self, x):
        ...         return self.fc(x.flatten(1))
    """

    def forward(self, *inputs):
        raise NotImplementedError

    def parameter_counts(self) -> tuple[int, int]:
        """(all parameters, trainable parameters)."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return total, trainable

    def head_names(self) -> list[str]:
        """Names of the submodules that form the classifier head, e.g. ``["fc"]``.

        The head is what ``trainer.freeze_backbone_epochs`` trains alone and what ``--dry-run`` counts
        apart from the backbone. Empty (the default): the model does not say.
        """
        return []

    def layer_ids(self) -> dict[str, int] | None:
        """Each parameter's depth, 0 at the input, for ``optimizer.layer_decay``; None: not supported."""
        return None

    def head_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters of the head (see ``head_names``), by name."""
        prefixes = tuple(f"{name}." for name in self.head_names())
        return {name: p for name, p in self.named_parameters() if prefixes and name.startswith(prefixes)}

    def summary(self, example_input: torch.Tensor | None = None) -> str:
        """The module tree, the parameter counts and, given an example batch, the output shape."""
        total, trainable = self.parameter_counts()
        lines = [super().__str__(), f"Parameters: {total:,} ({trainable:,} trainable)"]
        head = sum(p.numel() for p in self.head_parameters().values())
        if head:
            lines.append(f"Backbone parameters: {total - head:,}, head parameters: {head:,} "
                         f"({', '.join(self.head_names())})")
        if example_input is not None:
            was_training = self.training
            self.eval()
            with torch.no_grad():
                output = self(example_input)
            self.train(was_training)
            lines.append(f"Input shape: {tuple(example_input.shape)} -> output shape: {tuple(output.shape)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()
