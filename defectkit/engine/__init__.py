"""Training, checkpoints, distributed helpers and the shared inference loop."""
from . import settings  # noqa: F401  (declares the config sections)
from . import lr_schedule, optim  # noqa: F401  (register LR_SCHEDULES and OPTIMIZERS)
from .builders import (build_dataset, build_eval_loader, build_evaluator, build_model,  # noqa: F401
                       build_train_loader, init_model)
from .checkpoint import (CheckpointError, CheckpointNotFoundError, extract_state_dict,  # noqa: F401
                         find_latest_checkpoint, load_checkpoint, load_state_dict, save_checkpoint)
from .distributed import (all_gather_object, barrier, broadcast_object, get_rank,  # noqa: F401
                          get_world_size, init_distributed, is_main_process, unwrap_model)
from .inference import InferenceOutput, run_inference, summarize_times  # noqa: F401
from .losses import NonFiniteLossError, parse_losses  # noqa: F401
from .runtime import default_work_dir, resolve_device  # noqa: F401
from .trainer import Trainer, TrainResult, train  # noqa: F401
from .rounds import run_rounds  # noqa: F401
