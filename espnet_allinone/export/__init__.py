"""From an all-in-one model to shippable ESPnet models.

extract             cut subsystems into standalone model directories
slicing             the active tensors of one subsystem of an elastic encoder
packed_format       bit-packed low-bit weights inside a state_dict
standalone_config   the extracted model's ESPnet config.yaml
model_io            build + strictly load an ESPnet ASR model
files               atomic directories, content hashes
fast                dynamic int8, ONNX export, onnxruntime int8 / MatMulNBits
zoo                 model-zoo zips, model cards, Hugging Face upload
toy                 a freshly initialised all-in-one experiment (tests, benchmarks)
"""
