"""What the training stages share: the loop, the teacher-output cache, pre-flight checks,
devices and DistributedDataParallel, quantization-aware training."""
