"""Models and data: the zoo of names a user gives (`resnet20`, `torchvision:NAME`, `timm:NAME`, `digits`,
`imagefolder:DIR`, ...), the embedded CIFAR-style networks, and the baseline trained once and cached."""
