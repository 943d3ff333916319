"""`python -m microgpt.eval ckpt=<path> tasks=[val_loss,hellaswag]`: print and save a results table.

A task that cannot run (HellaSwag with no network, say) fails alone: the others' results are
printed and saved, then the command reports the failure and exits non-zero."""

from omegaconf import DictConfig

from microgpt.cli.command import hydra_command


@hydra_command("eval")
def main(cfg: DictConfig) -> dict:
    from microgpt.evals.suite import failed_tasks_error, output_files, results_markdown, run_tasks, write_results
    from microgpt.io.loading import check_device
    from microgpt.io.outputs import check_outputs

    check_device(cfg.device)
    check_outputs("out", output_files(cfg.out), overwrite=bool(cfg.overwrite))  # before the work
    results, failures = run_tasks(cfg)
    json_path = None
    if results:
        print(results_markdown(str(cfg.ckpt), results), end="")
        json_path, _ = write_results(cfg.out, str(cfg.ckpt), results, failures)
        print(f"saved {json_path} and {json_path.with_suffix('.md')}")
    if failures:
        raise failed_tasks_error(failures, list(results), json_path)
    return results


if __name__ == "__main__":
    main()
