"""From an all-in-one model to shippable ESPnet models.

extract             cut subsystems into standalone model directories
slicing             cut one architecture out of an elastic encoder, physically
calibration         BatchNorm statistics per subsystem, recalibrated before extraction
standalone_config   the extracted model's ESPnet config.yaml
extracted_dir       an extracted directory's file names, model files and sizes
model_io            load checkpoints and configs; build + strictly load an ESPnet ASR model
files               atomic directories, content hashes
zoo                 model-zoo zips, model cards, Hugging Face upload

The bit-packed state_dict layout is ``espnet_allinone.quant.packed_format``; ONNX
export and onnxruntime are ``espnet_allinone.deploy``.
"""
