#pragma once

// Everything a training program needs from tenax in one include.

#include "tenax/comm/communicator.h"
#include "tenax/comm/init.h"
#include "tenax/core/error.h"
#include "tenax/store/launch.h"
#include "tenax/store/store.h"
