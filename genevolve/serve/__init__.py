"""HTTP services the project runs itself (started with `genevolve serve ...`).

- `qwen_app`: the Qwen-Image-Edit render service that `qwen-image-edit-service` clients call.
"""
