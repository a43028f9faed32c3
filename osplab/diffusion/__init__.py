"""osplab.diffusion: how the generator is trained and sampled, separate from the backbone.

- rectified_flow.py: x_t = (1 - t) x0 + t noise, velocity loss, uniform / logit-normal t, Euler and Heun samplers.
- ddpm.py: the 1000-step DDPM baseline (schedules, zero terminal SNR, epsilon / v, ancestral and DDIM samplers).
- noise.py: the Gaussian noise of training and sampling, optionally correlated across latent frames.
- guidance.py: classifier-free guidance, turning a text backbone model(x, t, text, mask) into fn(x, t).
- toy.py: 2-D data, a tiny MLP and metrics for notebooks/03_rectified_flow.ipynb.

Samplers only see fn(x, t) with t of shape (B,) in [0, 1]; every random draw takes an explicit torch.Generator.
"""
