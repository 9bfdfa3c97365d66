#!/bin/sh
# Render the nginx templates the way the official nginx image does at start
# (/docker-entrypoint.d/20-envsubst-on-templates.sh): every *.template under TEMPLATE_DIR becomes
# OUTPUT_DIR/<same relative path without .template>, with envsubst substituting only the variables defined in
# the environment (names filtered by NGINX_ENVSUBST_FILTER, a regular expression, as in the image). nginx's own
# variables ($host, $http_host...) are never environment variables, so they stay as they are.
# A variable left unset stays in the output as written; `nginx -t` then names the file and line. (Both
# servers-*.inc are rendered whichever SCHEME is chosen, so the unused one may keep its placeholders.)
#
# Usage: render.sh OUTPUT_DIR [TEMPLATE_DIR]
#   OUTPUT_DIR    conf.d/ inside nginx's configuration directory (the templates include conf.d/signing-gateway/...)
#   TEMPLATE_DIR  default: the templates/ directory next to this script
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 OUTPUT_DIR [TEMPLATE_DIR]" >&2
  exit 2
fi
output_dir=$1
template_dir=${2:-$(dirname "$0")/templates}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
filter=${NGINX_ENVSUBST_FILTER:-}

command -v envsubst >/dev/null || { echo "$0: envsubst not found (Debian: apt-get install gettext-base)" >&2; exit 1; }
[ -d "$template_dir" ] || { echo "$0: no template directory $template_dir" >&2; exit 1; }
mkdir -p "$output_dir"

# The same expression as the image: '${NAME} ' for every environment variable whose name matches the filter.
defined_envs=$(printf '${%s} ' $(awk "END { for (name in ENVIRON) { print ( name ~ /${filter}/ ) ? name : \"\" } }" < /dev/null))

find "$template_dir" -follow -type f -name "*$suffix" -print | sort | while read -r template; do
  relative_path=${template#"$template_dir/"}
  output_path="$output_dir/${relative_path%"$suffix"}"
  mkdir -p "$(dirname "$output_path")"
  envsubst "$defined_envs" < "$template" > "$output_path"
done
