"""The Prefect tasks (`contact_recon.tasks`): thin `@task` wrappers over the stages in `contact_recon.stages`."""
