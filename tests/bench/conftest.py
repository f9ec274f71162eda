from importlib import metadata


def pytest_benchmark_update_machine_info(config, machine_info):
    import torch

    for dist in ("torch", "opacus", "diffusers", "flwr"):
        machine_info[dist] = metadata.version(dist)
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
