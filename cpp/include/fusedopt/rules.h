// Every update rule, and the list the engine and bindings iterate over.
#pragma once
#include "rules/adadelta.h"
#include "rules/adafactor.h"
#include "rules/adagrad.h"
#include "rules/adam.h"
#include "rules/adamax.h"
#include "rules/ftrl.h"
#include "rules/lamb.h"
#include "rules/lion.h"
#include "rules/muon.h"
#include "rules/nadam.h"
#include "rules/rmsprop.h"
#include "rules/schedule_free_adamw.h"
#include "rules/sgd.h"

// X(RuleType): the order here is the rule id used across the engine.
#define FUSEDOPT_FOR_EACH_RULE(X)                                                        \
  X(Sgd) X(SgdMomentum) X(SgdNesterov) X(SgdDampened) X(Rmsprop) X(RmspropMomentum)      \
  X(RmspropCentered) X(RmspropCenteredMomentum) X(Adagrad) X(Adadelta) X(Adam)           \
  X(AdamAmsgrad) X(Adamax) X(Nadam) X(Ftrl) X(Lion) X(Lamb) X(Adafactor)                 \
  X(ScheduleFreeAdamW) X(MuonMomentum)
