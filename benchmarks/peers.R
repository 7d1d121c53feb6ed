# One benchmark fit with an R peer; called by benchmarks/run.py in its own process.
#
#   Rscript benchmarks/peers.R --package lme4|glmmTMB --data case.csv --formula "y ~ x + (1 | g)"
#       --family gaussian|poisson|binomial --trials NA|column --out result.json
#
# Gaussian models are fitted by ML (lmer REML = FALSE) so that the log-likelihood compares with
# the engine's p_v(h); binomial and Poisson by the Laplace approximation (glmer nAGQ = 1,
# glmmTMB's default). Writes a JSON object: status, fit_seconds, loglik, converged, messages,
# fixef, variance components.

args <- commandArgs(trailingOnly = TRUE)
opt <- list()
for (i in seq(1, length(args), by = 2)) opt[[sub("^--", "", args[i])]] <- args[i + 1]

json_string <- function(x) {
  x <- gsub("\\\\", "\\\\\\\\", x)
  x <- gsub("\"", "\\\\\"", x)
  x <- gsub("[\r\n\t]", " ", x)
  paste0("\"", x, "\"")
}
json_number <- function(x) if (is.null(x) || !is.finite(x)) "null" else sprintf("%.10g", x)
json_named <- function(values) {
  if (length(values) == 0) return("{}")
  paste0("{", paste(json_string(names(values)), vapply(values, json_number, ""), sep = ": ",
                    collapse = ", "), "}")
}
write_result <- function(fields) {
  body <- paste(json_string(names(fields)), unlist(fields), sep = ": ", collapse = ",\n ")
  writeLines(paste0("{", body, "}"), opt$out)
}

messages <- character(0)
status <- "ok"
fit <- NULL
fit_seconds <- NA

pkg_ok <- suppressPackageStartupMessages(requireNamespace(opt$package, quietly = TRUE))
if (!pkg_ok) {
  write_result(list(status = json_string(paste("R package", opt$package, "not installed"))))
  quit(status = 0)
}
suppressPackageStartupMessages(library(opt$package, character.only = TRUE))

data <- read.csv(opt$data, stringsAsFactors = FALSE)
formula_text <- opt$formula
if (!is.null(opt$trials) && opt$trials != "NA") {
  response <- trimws(sub("~.*$", "", formula_text))
  rhs <- sub("^[^~]*~", "", formula_text)
  formula_text <- sprintf("cbind(%s, %s - %s) ~ %s", response, opt$trials, response, rhs)
}
model_formula <- as.formula(formula_text)
family <- switch(opt$family, gaussian = gaussian(), poisson = poisson(), binomial = binomial())

started <- proc.time()[["elapsed"]]
fit <- tryCatch(
  withCallingHandlers(
    {
      if (opt$package == "lme4") {
        if (opt$family == "gaussian") {
          lmer(model_formula, data = data, REML = FALSE)
        } else {
          glmer(model_formula, data = data, family = family, nAGQ = 1)
        }
      } else {
        glmmTMB(model_formula, data = data, family = family, REML = FALSE)
      }
    },
    warning = function(w) {
      messages <<- c(messages, conditionMessage(w))
      invokeRestart("muffleWarning")
    }
  ),
  error = function(e) {
    messages <<- c(messages, conditionMessage(e))
    NULL
  }
)
fit_seconds <- proc.time()[["elapsed"]] - started

if (is.null(fit)) {
  write_result(list(status = json_string("error"), fit_seconds = json_number(fit_seconds),
                    messages = json_string(paste(messages, collapse = "; "))))
  quit(status = 0)
}

loglik <- as.numeric(logLik(fit))
if (opt$package == "lme4") {
  conv <- fit@optinfo$conv
  converged <- (is.null(conv$opt) || conv$opt == 0) && length(conv$lme4$messages) == 0
  messages <- c(messages, unlist(conv$lme4$messages))
  fixef_values <- fixef(fit)
  vc <- as.data.frame(VarCorr(fit))
  vc <- vc[vc$grp != "Residual", ]
  variances <- setNames(vc$vcov, vc$grp)
} else {
  converged <- fit$fit$convergence == 0 && isTRUE(fit$sdr$pdHess)
  fixef_values <- fixef(fit)$cond
  variances <- vapply(VarCorr(fit)$cond, function(m) m[1, 1], 0.0)
}

write_result(list(
  status = json_string(status),
  fit_seconds = json_number(fit_seconds),
  loglik = json_number(loglik),
  converged = if (isTRUE(converged)) "true" else "false",
  messages = json_string(paste(unique(messages), collapse = "; ")),
  fixef = json_named(fixef_values),
  variances = json_named(variances),
  version = json_string(as.character(packageVersion(opt$package)))
))
