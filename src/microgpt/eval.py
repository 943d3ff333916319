"""`python -m microgpt.eval ckpt=<path> tasks=[val_loss,hellaswag]`: print and save a results table."""

from omegaconf import DictConfig

from microgpt.cli.command import hydra_command


@hydra_command("eval")
def main(cfg: DictConfig) -> dict:
    from microgpt.evals.suite import results_markdown, run_tasks, write_results

    results = run_tasks(cfg)
    print(results_markdown(str(cfg.ckpt), results), end="")
    json_path, _ = write_results(cfg.out, str(cfg.ckpt), results)
    print(f"saved {json_path} and {json_path.with_suffix('.md')}")
    return results


if __name__ == "__main__":
    main()
